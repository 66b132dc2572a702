"""Plain data (YAML, JSON, Tune's config dicts) <-> frozen dataclasses, with errors that name the path.

One converter serves every typed structure of the product: study specs, ``TrialConfig`` and
each plug-in's ``Params`` dataclass. ``from_plain(cls, data, where)`` rejects unknown keys
with the accepted ones listed, fills nothing that is not given (dataclass defaults do that),
converts by the type hints (lists -> tuples, ints and numeric strings -> floats, nested
dataclasses, Optional and Union arms) and raises ``ConfigError`` whose message starts with the path of the bad value,
e.g. ``experiments[1].balancer.name`` or ``balancer 'mgda'.max_iter``. The dataclasses' own
``__post_init__`` checks run after it (value ranges, cross-field rules).
"""
from __future__ import annotations

import collections.abc
import dataclasses
import numbers
import re
import typing
from typing import Any, Mapping


# a decimal number as text: YAML 1.1 (PyYAML) reads "2e-4" (no dot) as a string, YAML 1.2 as a float
NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


class ConfigError(ValueError):
    """A value does not fit its declared structure; the message names its path and the fix."""


def from_plain(cls, data: Any, where: str = ""):
    """An instance of dataclass ``cls`` from plain data (an instance of ``cls`` passes through)."""
    if isinstance(data, cls):
        return data
    label = where or cls.__name__
    if not isinstance(data, Mapping):
        raise ConfigError(f"{label}: expected a mapping, got {type(data).__name__} {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        raise ConfigError(f"{_join(where, unknown[0])}: unknown key; accepted here: "
                          f"{', '.join(fields) or '(none)'}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: convert(hints.get(name, Any), value, _join(where, name)) for name, value in data.items()}
    missing = [n for n, f in fields.items() if n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{_join(where, missing[0])}: required, but missing")
    try:
        return cls(**kwargs)
    except ConfigError as err:
        message = str(err)
        raise ConfigError(message if not where or message.startswith(where) else f"{where}.{message}") from None


def to_plain(obj: Any) -> Any:
    """Dataclasses, mappings and sequences as JSON-ready dicts and lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    return obj


def convert(hint: Any, value: Any, path: str) -> Any:
    """``value`` as type ``hint`` (see the module docstring), or ConfigError naming ``path``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or isinstance(hint, typing.TypeVar):
        return value
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        if len(arms) == 1:  # Optional[X]: X's own error, which says more than "expected X"
            return convert(arms[0], value, path)
        errors = []
        for arm in arms:
            try:
                return convert(arm, value, path)
            except ConfigError as err:
                errors.append((arm, err))
        for arm, err in errors:  # the arm of the value's own shape knows what is wrong inside it
            if _is_mapping_hint(arm) and isinstance(value, Mapping):
                raise err from None
        raise ConfigError(f"{path}: expected {type_name(hint)}, got {value!r}")
    if dataclasses.is_dataclass(hint):
        if hasattr(hint, "coerce"):  # shorthand forms (e.g. a plug-in given by its name)
            value = hint.coerce(value, path)
        return from_plain(hint, value, path)
    if origin in (tuple, list, collections.abc.Sequence):
        if isinstance(value, (str, numbers.Number)) and not isinstance(value, bool):
            value = [value]  # shorthand: "a" for ["a"], 0 for [0]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)}: {list(value)}")
            return tuple(convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        return tuple(convert(item, v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin in (dict, collections.abc.Mapping) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        value_hint = args[1] if len(args) == 2 else Any
        return {k: convert(value_hint, v, f"{path}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, str) and NUMBER.fullmatch(value.strip()):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def type_name(hint: Any) -> str:
    """A short reader's name of a type hint ("int", "list of str", "number or mapping")."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return " or ".join(type_name(a) for a in args if a is not type(None))
    if origin in (tuple, list, collections.abc.Sequence):
        return "list"
    if origin in (dict, collections.abc.Mapping):
        return "mapping"
    return {int: "integer", float: "number", str: "string", bool: "true/false"}.get(hint, getattr(hint, "__name__", str(hint)))


def _is_mapping_hint(hint: Any) -> bool:
    return dataclasses.is_dataclass(hint) or typing.get_origin(hint) in (dict, collections.abc.Mapping) \
        or hint in (dict, Mapping)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def field_names(cls) -> list:
    """The keys ``from_plain(cls, ...)`` accepts, in declaration order."""
    return [f.name for f in dataclasses.fields(cls) if f.init]


