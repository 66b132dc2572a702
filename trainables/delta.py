"""Multi-task performance Delta_m (survey Eq. 10).

Vandenhende et al., TPAMI 2021, Eq. (10):

    Delta_m = 1/T * sum_i (-1)^{l_i} (M_{m,i} - M_{b,i}) / M_{b,i}

with l_i = 1 when a lower value of metric M_i is better. Reported in percent. One metric per
task (its primary metric), as in the survey's tables.
"""
from __future__ import annotations

from typing import Mapping


def delta_m(
    model: Mapping[str, float],
    baseline: Mapping[str, float],
    higher_is_better: Mapping[str, bool],
) -> float:
    """Delta_m in percent of ``model`` against ``baseline`` over the keys of ``higher_is_better``.

    Args:
        model, baseline: metric key -> value; must hold every key of ``higher_is_better``.
        higher_is_better: metric key -> direction (False means l_i = 1).
    """
    if not higher_is_better:
        raise ValueError("delta_m: no metrics given")
    total = 0.0
    for key, higher in higher_is_better.items():
        for name, values in (("model", model), ("baseline", baseline)):
            if key not in values:
                raise KeyError(f"delta_m: {name} metrics lack {key!r} (have {sorted(values)})")
        m, b = float(model[key]), float(baseline[key])
        if b == 0:
            raise ZeroDivisionError(f"delta_m: baseline {key!r} is 0; Eq. 10 divides by it")
        sign = 1.0 if higher else -1.0
        total += sign * (m - b) / b
    return 100.0 * total / len(higher_is_better)
