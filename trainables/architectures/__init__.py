"""Multi-task architecture plug-ins, one file each; the contract is in ``base.py``."""
from trainables.architectures import astmt, branched, cross_stitch, jtrl, mtan, mtl_baseline, nddr, pap_net, single_task  # noqa: F401
from trainables.architectures.base import MultiTaskModel  # noqa: F401
