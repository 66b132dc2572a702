"""The survey's decoder-based models (Sec. 2.3, 4.3-4.4, Tables 6-10), shared by their presets.

Single-scale (Tables 6, 8, 10): JTRL, PAP-Net and PAD-Net on NYUD-v2's dilated ResNet-50, ASTMT
and PAD-Net on PASCAL's dilated ResNet-26. Multi-scale (Tables 7, 9): PAD-Net and MTI-Net on
HRNet-18 with HRNet heads. Every model is trained with the study's fixed loss weights (uniform on
NYUD, the survey code's on PASCAL). The survey code's NYUD configs also train MTI-Net / PAD-Net
with normals and edges as auxiliary tasks (``*+edges_normals.yml``, weights normals 10, edge 50);
``WITH_EDGES_NORMALS`` is that variant, used by the synthetic twin of Table 7.
"""
from search_spaces.encoder_models import QUICKSTART


def experiment(name: str, architecture: str = "", weights=None, **more) -> dict:
    balancer = {"name": "fixed", "params": {"weights": dict(weights)}} if weights else "fixed"
    return {"name": name, "architecture": architecture or name, "balancer": balancer, **more}


def single_scale_nyud() -> list:
    return [experiment("mtl_baseline"), experiment("jtrl"), experiment("pap_net"), experiment("pad_net")]


def multi_scale(weights=None) -> list:
    return [experiment("mtl_baseline", weights=weights), experiment("pad_net", weights=weights),
            experiment("mti_net", weights=weights)]


NYUD_AUX_WEIGHTS = {"semseg": 1.0, "depth": 1.0, "normals": 10.0, "edge": 50.0}
WITH_EDGES_NORMALS = experiment("mti_net_edges_normals", "mti_net", NYUD_AUX_WEIGHTS, auxiliary_tasks=["normals", "edge"])


def reference(source: str, **rows) -> dict:
    """A table's #P (M) / FLOPS (G) columns, each row (params, flops) by experiment name."""
    return {"source": source, "rows": {k: {"params_m": p, "flops_g": f} for k, (p, f) in rows.items()}}


def synthetic_twin(table: dict, doc: str, **changes) -> dict:
    """``table``'s models on the synthetic scenes (semseg, depth) at the quickstart's size and grid slice."""
    return {**QUICKSTART, "name": f"{table['name']}_synthetic", "description": doc.splitlines()[0],
            "tasks": ["semseg", "depth"], "experiments": table["experiments"], **changes}
