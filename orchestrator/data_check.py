"""``mtl data check``: is a dataset on disk in the format its loader expects?"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from orchestrator.spec import load_yaml


def parse_params(pairs) -> Dict[str, Any]:
    """["key=value", ...] -> dict, values parsed as YAML scalars (numbers, bools, lists; YAML 1.2's
    floats, so 2e-4 is a number)."""
    params = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--param {pair!r}: expected KEY=VALUE")
        params[key] = load_yaml(value)
    return params


def check_dataset(name: str, root: Optional[str], params: Mapping[str, Any]) -> Dict[str, Any]:
    """The dataset's JSON summary; raises ``trainables.datasets.readers.DataCheckError``
    naming the first bad file."""
    import trainables  # noqa: F401
    from trainables.registry import DATASETS

    cls = DATASETS.get(name)
    summary = cls.check(root, **dict(params))
    return {"dataset": name, "root": root, **summary}
