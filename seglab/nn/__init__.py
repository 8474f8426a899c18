"""Building blocks shared by the models. Imports torch only."""

from seglab.nn.blocks import ConvBNAct, SeparableConv2d, center_crop, mirror_pad
from seglab.nn.upsample import BilinearDeconv, bilinear_kernel, resize_to

__all__ = [
    "BilinearDeconv",
    "ConvBNAct",
    "SeparableConv2d",
    "bilinear_kernel",
    "center_crop",
    "mirror_pad",
    "resize_to",
]
