"""The survey's encoder-based models (Sec. 2.2, Tables 3-5), shared by the Table 3-5 presets.

The MTL baseline, MTAN, cross-stitch networks and NDDR-CNN, each with fixed uniform loss weights
as in the tables; the single-task networks come with every study. ``synthetic_twin`` turns a
table's preset into its laptop-sized twin: the same models on the synthetic scenes with the
tiny backbone and light heads, and a two-setting slice of the grid (the quickstart's).
"""
from search_spaces.quickstart import SPEC as QUICKSTART

EXPERIMENTS = [
    {"name": "mtl_baseline", "architecture": "mtl_baseline", "balancer": "fixed"},
    {"name": "mtan", "architecture": "mtan", "balancer": "fixed"},
    {"name": "cross_stitch", "architecture": "cross_stitch", "balancer": "fixed"},
    {"name": "nddr_cnn", "architecture": "nddr", "balancer": "fixed"},
]


def reference(source: str, single, mtl, mtan, cross_stitch, nddr, **more) -> dict:
    """A table's #P (M) / FLOPS (G) columns, each row a (params, flops) pair (``more``: other rows
    by experiment name)."""
    rows = {"single_task": single, "mtl_baseline": mtl, "mtan": mtan, "cross_stitch": cross_stitch, "nddr_cnn": nddr,
            **more}
    return {"source": source, "rows": {k: {"params_m": p, "flops_g": f} for k, (p, f) in rows.items()}}


def synthetic_twin(table: dict, tasks: list, doc: str) -> dict:
    """``table``'s models and search filters on the synthetic scenes (no paper columns)."""
    return {**QUICKSTART, "name": f"{table['name']}_synthetic", "description": doc.splitlines()[0], "tasks": tasks,
            "experiments": table["experiments"]}
