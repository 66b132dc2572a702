"""Task-balancing plug-ins (one file each)."""
from trainables.balancers import fixed  # noqa: F401
from trainables.balancers.base import Balancer  # noqa: F401
