"""Encoders: backbones that return a list of feature maps with declared channels and strides."""

from seglab.encoders.base import Encoder
from seglab.encoders.vgg import VGG16, load_torchvision_vgg16

__all__ = ["VGG16", "Encoder", "load_torchvision_vgg16"]
