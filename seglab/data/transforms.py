"""Joint image/mask transforms on torchvision.transforms.v2 (masks: nearest, padded with 255)."""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from seglab.data.labels import IGNORE_INDEX

# Images are normalised with the ImageNet statistics that pretrained encoders expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomScale(torch.nn.Module):
    """Resize image and mask by one factor drawn uniformly from [low, high]."""

    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        self.low, self.high = low, high

    def forward(self, image, mask):
        factor = self.low + (self.high - self.low) * torch.rand(()).item()
        h, w = image.shape[-2:]
        size = [max(1, round(h * factor)), max(1, round(w * factor))]
        return v2.functional.resize(image, size, antialias=True), v2.functional.resize(mask, size)


class ToModelInput(torch.nn.Module):
    """uint8 image -> normalised float (3, H, W); mask -> int64 (H, W)."""

    def forward(self, image, mask):
        image = v2.functional.to_dtype(image, torch.float32, scale=True)
        image = v2.functional.normalize(image, IMAGENET_MEAN, IMAGENET_STD)
        return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor).long()


class JointTransform:
    """Wrap tensors as tv_tensors so that v2 transforms treat image and mask jointly."""

    def __init__(self, transforms: list) -> None:
        self.transforms = v2.Compose(transforms)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor):
        return self.transforms(tv_tensors.Image(image), tv_tensors.Mask(mask))


def train_transform(
    crop_size: list[int] | None, scale_range: list[float] | None, hflip: bool
) -> JointTransform:
    steps: list = []
    if scale_range:
        steps.append(RandomScale(*scale_range))
    if crop_size:
        fill = {tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}
        steps.append(v2.RandomCrop(crop_size, pad_if_needed=True, fill=fill))
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    steps.append(ToModelInput())
    return JointTransform(steps)


def eval_transform() -> JointTransform:
    return JointTransform([ToModelInput()])


def normalize_image(image: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) uint8 -> normalised float, as the models were trained."""
    image = v2.functional.to_dtype(image, torch.float32, scale=True)
    return v2.functional.normalize(image, IMAGENET_MEAN, IMAGENET_STD)
