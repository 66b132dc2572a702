"""Model size and compute: #params and FLOPs, as in the survey's "#P (M)" and "FLOPS (G)" columns.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one forward pass, which
counts 2 FLOPs per multiply-accumulate (convolutions, matmuls, attention; element-wise ops,
pooling, BN and interpolation are not counted). The survey's FLOPS column counts
multiply-accumulates (a dilated ResNet-50 encoder at 480 x 640 is 116.8 G, as Table 3 counts),
so the product reports **"FLOPS (G)" = macs / 1e9**, like the survey, and "#P (M)" =
count_parameters / 1e6.

Counting a full-size model need not allocate or compute anything: build it on the meta device
(``with torch.device("meta"): model = build_model(...)``) and ``count_flops`` runs on meta
tensors, which takes well under a second even for ResNet-50 at 480 x 640.
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(
    model: nn.Module, input_hw: Sequence[int], batch: int = 1, in_channels: int = 3
) -> Dict[str, int]:
    """FLOPs of one forward pass on a zeros input [batch, in_channels, H, W].

    Runs in eval mode (BN uses running statistics, dropout is off) under ``no_grad`` on the
    model's device, then restores every submodule's train/eval mode.

    Returns:
        {"flops": total FLOPs as torch counts them (2 per multiply-accumulate),
         "macs": flops / 2 (what the survey's "FLOPS" column reports, in G = 1e9)}.
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    x = torch.zeros(batch, in_channels, int(input_hw[0]), int(input_hw[1]), device=device, dtype=dtype)
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for m, training in modes.items():
            m.training = training
    flops = int(counter.get_total_flops())
    return {"flops": flops, "macs": flops // 2}  # torch counts exactly 2 per MAC
