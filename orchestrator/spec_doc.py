"""The study spec reference (``docs/spec.md``), generated from the spec dataclasses.

Every section is one dataclass of ``orchestrator/spec.py``, reached from ``StudySpec`` through
its fields' types; every row is one field with its type as a spec file writes it, its default,
and its meaning from the ``Attributes:`` section of the class docstring (one ``name: text``
entry per field). ``python -m orchestrator.spec_doc > docs/spec.md`` (or ``mtl spec-doc``)
writes it; a test keeps the committed file equal to this output.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import inspect
import re
import typing
from typing import Any, Dict, List

from orchestrator.spec import StudySpec
from trainables.plugins import Plugin

INTRO = """\
# Study spec reference

Generated from the spec dataclasses in `orchestrator/spec.py` by
`python -m orchestrator.spec_doc > docs/spec.md` (or `mtl spec-doc`); do not edit it by hand.

A study spec is a YAML file (or a preset's dict in `search_spaces/`) whose top level is a
[StudySpec](#studyspec). Unknown keys are refused with the accepted ones listed, and every
field is checked before Ray starts: an error names the field's path, e.g.
`experiments[1].balancer.name`. A list of one value may be written as the value (`seeds: 0`).
`mtl run SPEC --dry-run` prints the plan of a spec without training anything.

A **plug-in** is written as its registered name (`balancer: fixed`) or as
`{name: fixed, params: {weights: {depth: 2.0}}}`; `mtl list KIND` prints every plug-in of a
kind with its parameters.
"""


def field_docs(cls: type) -> Dict[str, str]:
    """Field name -> text, from the ``Attributes:`` section of ``cls``'s docstring.

    An entry is ``name: text`` indented one level below ``Attributes:``; deeper lines continue it.
    """
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    docs: Dict[str, str] = {}
    if "Attributes:" not in lines:
        return docs
    name = None
    for line in lines[lines.index("Attributes:") + 1:]:
        if not line.strip():
            break
        entry = re.match(r"^    (\w+): (.*)$", line)
        if entry:
            name = entry.group(1)
            docs[name] = entry.group(2)
        elif name is not None and line.startswith("        "):
            docs[name] += " " + line.strip()
    return docs


def summary(cls: type) -> str:
    """The docstring's text before its ``Attributes:`` section, as one paragraph."""
    text = inspect.cleandoc(cls.__doc__ or "").split("Attributes:")[0]
    return _markdown(" ".join(text.split()))


def sections(root: type = StudySpec) -> List[type]:
    """The spec dataclasses reachable from ``root`` through field types, breadth first (the
    top level, then its sections in field order, then theirs)."""
    found = [root]
    for cls in found:  # grows while it is walked
        for hint in typing.get_type_hints(cls).values():
            found += [inner for inner in _dataclasses_in(hint) if inner not in found]
    return found


def _dataclasses_in(hint: Any) -> List[type]:
    if dataclasses.is_dataclass(hint):
        return [] if hint is Plugin else [hint]
    return [c for arg in typing.get_args(hint) for c in _dataclasses_in(arg)]


def type_text(hint: Any) -> str:
    """A field's type as a spec file writes it ("list of integer or null", "plug-in")."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        arms = [a for a in args if a is not type(None)]
        return " or ".join(type_text(a) for a in arms) + (" or null" if len(arms) < len(args) else "")
    if origin in (tuple, list, collections.abc.Sequence):
        return f"list of {type_text(args[0])}" if args else "list"
    if origin in (dict, collections.abc.Mapping):
        return "mapping" if args[1] is Any else f"mapping of name to {type_text(args[1])}"
    if hint is Plugin:
        return "plug-in"
    if dataclasses.is_dataclass(hint):
        return f"[{hint.__name__}](#{hint.__name__.lower()})"
    return {int: "integer", float: "number", str: "string", bool: "true/false", Any: "any"}.get(hint, str(hint))


def default_text(f: dataclasses.Field) -> str:
    """A field's default as YAML would write it, or "required"."""
    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
        return "required"
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default
    if isinstance(value, Plugin):
        return f"`{value.name}`" if not value.params else f"`{_yaml(value.to_dict())}`"
    if dataclasses.is_dataclass(value):
        return "its defaults"
    return f"`{_yaml(value)}`"


def _yaml(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return value or '""'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, collections.abc.Mapping):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _markdown(text: str) -> str:
    """Docstring text in markdown: ``code`` -> `code`; a "|" would end a table cell."""
    return text.replace("``", "`").replace("|", "\\|")


def render() -> str:
    """The whole reference (markdown)."""
    out = [INTRO]
    for cls in sections():
        docs = field_docs(cls)
        out += [f"## {cls.__name__}", "", summary(cls), "",
                "| field | type | default | meaning |", "|---|---|---|---|"]
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            out.append(f"| `{f.name}` | {type_text(hints[f.name])} | {default_text(f)} | "
                       f"{_markdown(docs.get(f.name, ''))} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
