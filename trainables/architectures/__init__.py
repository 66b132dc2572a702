"""Multi-task architecture plug-ins, one file each; the contract is in ``base.py``."""
from trainables.architectures import branched, cross_stitch, mtan, mtl_baseline, nddr, single_task  # noqa: F401
from trainables.architectures.base import MultiTaskModel  # noqa: F401
