"""Task plug-ins: loss, sum-reducible metric state and metric direction (see ``base.Task``).

Importing this package registers every built-in task type in ``TASKS``.
"""
from trainables.tasks import depth, edge, normals, scene, semseg  # noqa: F401
from trainables.tasks.base import Task

__all__ = ["Task"]
