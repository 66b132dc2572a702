"""``mtl models``: every model of a study with #P and FLOPS at the dataset's real input size.

Nothing is trained and no data is read: models are built on the meta device from the plan
(``plan.expand``), the single-task networks of each backbone/head pair are summed as in the
survey's tables, and a preset that reproduces a paper table (``StudySpec.reference``) gets the
paper's columns beside the measured ones, with the relative difference. An experiment whose tree
a grouping search derives has no size until the search has run (``mtl group`` prints it).
"""
from __future__ import annotations

from typing import Dict, List, Optional

from orchestrator.plan import complexity, expand, validate
from orchestrator.spec import StudySpec


def model_sizes(spec: StudySpec) -> List[Dict]:
    """[{"model", "params_m", "flops_g", "ref_params_m", "ref_flops_g"}], single-task rows first."""
    info = validate(spec)
    single, multi = expand(spec, info, data_root=None)
    sizes = {e.name: complexity(e.base) for e in single + multi if e.grouping is None}
    groups: Dict[str, List[str]] = {}
    for exp in multi:
        groups.setdefault(",".join(exp.baselines), list(exp.baselines))
    refs = spec.reference.rows if spec.reference else {}
    rows = []
    for i, names in enumerate(groups.values()):
        label = "Single task" + (f" [{names[0].split('[', 1)[1].split(']')[0]}]" if "[" in names[0] else "")
        rows.append(_row(label, [sizes[n] for n in names], refs.get("single_task") if i == 0 else None))
    rows += [_row(exp.name if exp.grouping is None else f"{exp.name} (tree: {exp.grouping.name}, mtl group)",
                  [sizes[exp.name]] if exp.grouping is None else None, refs.get(exp.name)) for exp in multi]
    return rows


def _row(label: str, parts, ref) -> Dict:
    return {"model": label, "params_m": sum(p for p, _ in parts) / 1e6 if parts else None,
            "flops_g": sum(g for _, g in parts) if parts else None,
            "ref_params_m": getattr(ref, "params_m", None), "ref_flops_g": getattr(ref, "flops_g", None)}


def render(spec: StudySpec, rows: List[Dict]) -> str:
    """A markdown table; with a reference, the paper's columns and the differences in %."""
    from trainables.build import describe_dataset

    info = describe_dataset(spec.dataset.plugin)
    head = (f"{spec.name}: dataset {spec.dataset.name} at {info.input_size[0]}x{info.input_size[1]}, "
            f"tasks {', '.join(spec.tasks)}" + (f"; paper columns: {spec.reference.source}" if spec.reference else ""))
    header = ["Model", "#P (M)", "FLOPS (G)"]
    if spec.reference:
        header += ["paper #P", "paper FLOPS", "Δ #P", "Δ FLOPS"]
    body = []
    for r in rows:
        line = [r["model"], _num(r["params_m"], ".2f"), _num(r["flops_g"], ".1f" if (r["flops_g"] or 0) >= 10 else ".3f")]
        if spec.reference:
            line += [_num(r["ref_params_m"]), _num(r["ref_flops_g"]),
                     _diff(r["params_m"], r["ref_params_m"]), _diff(r["flops_g"], r["ref_flops_g"])]
        body.append(line)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    fmt = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    note = "FLOPS: multiply-accumulates of one forward pass, as the survey counts them; single task: all tasks' networks."
    return "\n".join([head, fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
                     + [fmt(b) for b in body] + [note])


def _num(value: Optional[float], fmt: str = "g") -> str:
    return "-" if value is None else format(value, fmt)


def _diff(measured: Optional[float], paper: Optional[float]) -> str:
    return "-" if not paper or measured is None else f"{100.0 * (measured - paper) / paper:+.1f}%"
