"""Task-head (decoder) plug-ins, one file each.

Contract: ``HEADS.get(name)(in_channels: int, out_channels: int, **params)`` returns an
``nn.Module``. Dense heads map features [B, in_channels, h, w] to [B, out_channels, h, w]
(the architecture upsamples to the input size); image-level heads (``linear``) map them to
[B, out_channels].
"""
from trainables.heads import aspp, conv, deeplabv3plus, hrnet, linear, psp, segnet, taskonomy_fcn  # noqa: F401
