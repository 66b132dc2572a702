"""Hyper-parameter spaces and study presets (one module per preset, each a small SPEC dict)."""
from __future__ import annotations

from types import ModuleType
from typing import Dict

from search_spaces import quickstart, survey_synthetic

PRESETS: Dict[str, ModuleType] = {
    "quickstart": quickstart,
    "survey_synthetic": survey_synthetic,
}


def preset(name: str) -> dict:
    """The SPEC dict of a preset, or a KeyError listing the presets."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; presets: {', '.join(sorted(PRESETS))}")
    return PRESETS[name].SPEC
