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


# Laptop widths for the twins: at full width JTRL's decoder alone is ~7 G MACs per 64 x 64 image,
# ~360 x the tiny backbone, and PAD-Net's 256-wide decoder ~0.3-1 G.
LAPTOP_PARAMS = {"jtrl": {"widths": [64, 32, 16], "head_channels": 16},
                 "pap_net": {"channels": 64, "affinity_channels": 32, "head_channels": 16, "iterations": 3},
                 "pad_net": {"channels": 64}}


def _laptop(exp: dict) -> dict:
    arch = exp["architecture"]
    name = arch if isinstance(arch, str) else arch["name"]
    if name not in LAPTOP_PARAMS:
        return exp
    params = dict(arch.get("params", {})) if isinstance(arch, dict) else {}
    return {**exp, "architecture": {"name": name, "params": {**LAPTOP_PARAMS[name], **params}}}


def synthetic_twin(table: dict, doc: str, **changes) -> dict:
    """``table``'s models on the synthetic scenes (semseg, depth) at the quickstart's size and grid
    slice, the decoders at laptop widths (``LAPTOP_PARAMS``)."""
    twin = {**QUICKSTART, "name": f"{table['name']}_synthetic", "description": doc.splitlines()[0],
            "tasks": ["semseg", "depth"], "experiments": table["experiments"], **changes}
    twin["experiments"] = [_laptop(e) for e in twin["experiments"]]
    return twin
