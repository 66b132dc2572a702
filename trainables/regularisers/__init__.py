"""Regulariser plug-ins (cross-task losses outside the balancer), one file each; the contract is
in ``base.py``."""
from trainables.regularisers import consistency, direct_map, jtr, mgm, mtpsl, must, perceptual_map  # noqa: F401
from trainables.regularisers.base import Regulariser  # noqa: F401
