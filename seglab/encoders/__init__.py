"""Encoders: backbones that return a list of feature maps with declared channels and strides."""

from seglab.encoders.base import Encoder
from seglab.encoders.timm_encoder import (
    TimmEncoder,
    apply_multi_grid,
    build_encoder,
    load_state_dict_file,
)
from seglab.encoders.vgg import VGG16, load_torchvision_vgg16

__all__ = [
    "VGG16",
    "Encoder",
    "TimmEncoder",
    "apply_multi_grid",
    "build_encoder",
    "load_state_dict_file",
    "load_torchvision_vgg16",
]
