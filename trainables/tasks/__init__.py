"""Task plug-ins: loss, sum-reducible metric state, metric direction, and what the data
pipeline needs to know about their targets (ignored elements, mirror / zoom / rotation /
resampling); see ``base.Task``. Each type's keyword arguments are its frozen ``Params``.

Importing this package registers every built-in task type in ``TASKS``.
"""
from trainables.tasks import depth, edge, normals, scene, semseg  # noqa: F401
from trainables.tasks import attribute, dense_l1, human_parts, keypoints, saliency  # noqa: F401
from trainables.tasks import instance_center  # noqa: F401
from trainables.tasks.base import Task

__all__ = ["Task"]
