"""Task-balancing plug-ins (one file each)."""
from trainables.balancers import (  # noqa: F401
    atw,
    auto_lambda,
    cagrad,
    dtp,
    dwa,
    fixed,
    gcs,
    gradnorm,
    ial,
    imtl,
    mgda,
    miraliev,
    ol_aux,
    pcgrad,
    puw,
    rlw,
    uncertainty,
)
from trainables.balancers.base import Balancer  # noqa: F401
