"""The data plane: everything that runs inside a Ray Train worker.

Importing this package registers every built-in plug-in (each subpackage imports its modules
explicitly).
"""
from trainables import architectures, backbones, balancers, datasets, heads, regularisers, tasks  # noqa: F401
from trainables.registry import REGISTRIES  # noqa: F401
