"""The parameter fields the real-data loaders share, as frozen dataclass bases.

A loader's ``Params`` extends the base that matches what it does, so no loader carries a field
that means nothing for it:

    SampleParams   max_samples, flip                    every loader (celeba, taskonomy, ...)
    HoldoutParams  + val_fraction, seed                 loaders that carve "val" out of the
                                                        official train list (``disk.holdout_split``)
    ZoomParams     + scales                             loaders with the random zoom-crop
                                                        (``transforms.zoom_and_flip``)

Each subclass sets ``dataset`` (the name its errors start with, e.g. "nyud: val_fraction must
be ...") and, if it has checks of its own, calls ``super().__post_init__()``. Loaders build
their ``Params`` with ``plugins.make_params`` (unknown keys are rejected with the accepted ones
listed; lists become tuples).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Tuple

import numpy as np


def is_int(x) -> bool:
    """An integer (numpy ints too), not a bool."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def is_number(x) -> bool:
    """An int or float, not a bool."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass(frozen=True)
class SampleParams:
    """Attributes:
        max_samples: keep only the first N samples of each split (smoke runs); None keeps all.
        flip: random horizontal flips when augmenting.
    """

    max_samples: Optional[int] = None
    flip: bool = True
    dataset: ClassVar[str] = ""

    def __post_init__(self) -> None:
        m = self.max_samples
        if m is not None and (not is_int(m) or m < 1):
            raise ValueError(f"{self.dataset}: max_samples must be a positive int or null, got {m!r}")
        if not isinstance(self.flip, bool):
            raise ValueError(f"{self.dataset}: flip must be a bool, got {self.flip!r}")


@dataclass(frozen=True)
class HoldoutParams(SampleParams):
    """Attributes (besides ``SampleParams``'):
        val_fraction: share of the official train list held out as "val" (0 < f < 1).
        seed: seed of that hold-out.
    """

    val_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        v = self.val_fraction
        if not is_number(v) or not 0 < v < 1:
            raise ValueError(f"{self.dataset}: val_fraction must be a float in (0, 1), got {v!r}")
        if not is_int(self.seed) or self.seed < 0:
            raise ValueError(f"{self.dataset}: seed must be a non-negative int, got {self.seed!r}")


@dataclass(frozen=True)
class ZoomParams(HoldoutParams):
    """Attributes (besides ``HoldoutParams``'):
        scales: zoom factors of the random scale crop (each in [1, 4]).
    """

    scales: Tuple[float, ...] = (1.0, 1.2, 1.5)

    def __post_init__(self) -> None:
        super().__post_init__()
        s = self.scales
        if not isinstance(s, (list, tuple)) or not s or any(not is_number(x) or not 1 <= x <= 4 for x in s):
            raise ValueError(f"{self.dataset}: scales must be a non-empty list of zoom factors in [1, 4], got {s!r}")
        object.__setattr__(self, "scales", tuple(float(x) for x in s))


def as_size(dataset: str, field: str, value, allow_none: bool = True) -> Optional[Tuple[int, int]]:
    """An (H, W) pair of positive ints (lists from YAML become tuples), or None if allowed."""
    if value is None and allow_none:
        return None
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(is_int(v) and v > 0 for v in value):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"{dataset}: {field} must be [H, W], two positive ints"
                     f"{' (or null)' if allow_none else ''}; got {value!r}")
