"""Multi-task architecture plug-ins, one file each; the contract is in ``base.py``."""
from trainables.architectures import (  # noqa: F401
    astmt, branched, cross_stitch, jtrl, mtan, mti_net, mtl_baseline, nddr, pad_net, pap_net, single_task,
)
from trainables.architectures.base import MultiTaskModel  # noqa: F401
