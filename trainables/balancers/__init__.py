"""Task-balancing plug-ins (one file each)."""
from trainables.balancers import (  # noqa: F401
    cagrad,
    dtp,
    dwa,
    fixed,
    gcs,
    gradnorm,
    ial,
    imtl,
    mgda,
    ol_aux,
    pcgrad,
    rlw,
    uncertainty,
)
from trainables.balancers.base import Balancer  # noqa: F401
