"""Joint image/mask transforms on torchvision.transforms.v2 (masks: nearest, padded with 255).

The papers' training augmentations, each a module taking and returning (image, mask) as
tv_tensors: image (3, H, W) uint8, mask (H, W) int64. Geometric ones move both together (the
image interpolated, the mask nearest, uncovered mask pixels 255); photometric ones touch the
image only. train_transform builds the chain from the data config; see AUGMENT_KEYS.
An RGB-D sample is (image, mask, depth), depth an (H, W) float32 `Depth` in metres: geometric
steps move it as the mask (nearest, uncovered pixels 0 = no depth), photometric ones pass it
through, and ToModelInput appends it, normalised, as the last channel of the image.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

from seglab.data.depth import Depth, normalize_depth
from seglab.data.labels import IGNORE_INDEX
from seglab.errors import SeglabError

# Images are normalised with the ImageNet statistics that pretrained encoders expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _sample(image, mask, depth):
    """(image, mask), or (image, mask, depth) for an RGB-D sample."""
    return (image, mask) if depth is None else (image, mask, depth)


def _uniform(low: float, high: float) -> float:
    """One draw from torch's generator, so a sample's (index, seed) fixes it."""
    return low + (high - low) * torch.rand(()).item()


class RandomScale(torch.nn.Module):
    """Resize image and mask by one factor drawn uniformly from [low, high]."""

    def __init__(self, low: float, high: float) -> None:
        super().__init__()
        self.low, self.high = low, high

    def forward(self, image, mask, depth=None):
        factor = _uniform(self.low, self.high)
        h, w = image.shape[-2:]
        size = [max(1, round(h * factor)), max(1, round(w * factor))]
        image = v2.functional.resize(image, size, antialias=True)
        depth = None if depth is None else v2.functional.resize(depth, size)  # nearest
        return _sample(image, v2.functional.resize(mask, size), depth)


def rotate_pair(image, mask, angle: float, depth=None):
    """Rotate (3, H, W) image (bilinear, fill 0) and (H, W) mask (nearest, fill 255) by
    `angle` degrees counter-clockwise about the centre, keeping the size; depth, if given,
    nearest with fill 0 (no depth)."""
    image = v2.functional.rotate(image, angle, interpolation=v2.InterpolationMode.BILINEAR, fill=0)
    depth = None if depth is None else v2.functional.rotate(depth, angle, fill=0)
    return _sample(image, v2.functional.rotate(mask, angle, fill=IGNORE_INDEX), depth)


class RandomRotation(torch.nn.Module):
    """PSPNet's rotation: an angle uniform in [-degrees, degrees]; the corners it uncovers
    are black in the image and ignored (255) in the mask."""

    def __init__(self, degrees: float) -> None:
        super().__init__()
        self.degrees = degrees

    def forward(self, image, mask, depth=None):
        return rotate_pair(image, mask, _uniform(-self.degrees, self.degrees), depth)


def elastic_pair(image, mask, displacement: torch.Tensor, depth=None):
    """Warp image (bicubic) and mask (nearest) by a coarse displacement grid.

    displacement: (2, g, g) pixel offsets (dy, dx) at g x g evenly spaced control points
    (corners included); per-pixel offsets come from bicubic interpolation of the grid, as in
    U-Net. Output pixel p takes the input at p + offset(p); beyond the border the input is
    mirrored, so the mask only ever holds values of the input mask.
    """
    h, w = image.shape[-2:]
    offsets = F.interpolate(displacement[None].float(), (h, w), mode="bicubic", align_corners=True)
    ys = torch.arange(h, dtype=torch.float32)[:, None] + offsets[0, 0]
    xs = torch.arange(w, dtype=torch.float32)[None, :] + offsets[0, 1]
    # grid_sample's align_corners=True maps -1 and 1 to the centres of the border pixels.
    grid = torch.stack([2 * xs / max(w - 1, 1) - 1, 2 * ys / max(h - 1, 1) - 1], -1)[None]
    warped = F.grid_sample(
        image[None].float(), grid, mode="bicubic", padding_mode="reflection", align_corners=True
    )
    warped_mask = F.grid_sample(
        mask[None, None].float(), grid, mode="nearest", padding_mode="reflection",
        align_corners=True,
    )  # fmt: skip
    image_out = warped[0].round().clamp(0, 255).to(image.dtype)
    mask_out = warped_mask[0, 0].round().to(mask.dtype)
    if depth is not None:  # nearest, as the mask: a depth that exists in the input
        depth = tv_tensors.wrap(
            F.grid_sample(depth[None, None].float(), grid, mode="nearest",
                          padding_mode="reflection", align_corners=True)[0, 0],
            like=depth,
        )  # fmt: skip
    return _sample(tv_tensors.wrap(image_out, like=image), tv_tensors.wrap(mask_out, like=mask),
                   depth)  # fmt: skip


class RandomDihedral(torch.nn.Module):
    """One of the 8 symmetries of the square, uniformly: a rotation by 0, 90, 180 or 270
    degrees, then a vertical flip or none. Exact (pixels are only moved), so image, mask and
    depth need no interpolation or fill. For data whose classes do not depend on orientation
    (top-down, microscopy, the shapes scenes); with hflip on it adds the rotations. A
    non-square sample is only turned by 0 or 180 degrees, so that a batch keeps its shape."""

    def forward(self, image, mask, depth=None):
        turns = int(torch.randint(4, ()).item())
        flip = bool(torch.randint(2, ()).item())
        if image.shape[-2] != image.shape[-1]:
            turns = 2 * (turns % 2)

        def move(tensor):
            moved = torch.rot90(tensor, turns, dims=(-2, -1))
            return tv_tensors.wrap(moved.flip(-2) if flip else moved, like=tensor)

        return _sample(move(image), move(mask), None if depth is None else move(depth))


class ElasticDeformation(torch.nn.Module):
    """U-Net's elastic deformation: random displacements on a coarse grid x grid lattice,
    drawn from N(0, sigma^2) pixels, interpolated bicubically to every pixel."""

    def __init__(self, grid: int = 3, sigma: float = 10.0, p: float = 1.0) -> None:
        super().__init__()
        if grid < 2:
            raise SeglabError(f"data.augment.elastic.grid={grid}: use 2 or more control points")
        self.grid, self.sigma, self.p = grid, sigma, p

    def forward(self, image, mask, depth=None):
        if torch.rand(()).item() >= self.p:
            return _sample(image, mask, depth)
        displacement = torch.randn(2, self.grid, self.grid) * self.sigma
        return elastic_pair(image, mask, displacement, depth)


class PhotometricDistortion(torch.nn.Module):
    """The SSD/MMSegmentation photometric distortion, image only, each step with p = 0.5:
    brightness + U(-brightness, brightness), contrast x U(contrast), saturation x
    U(saturation), hue + U(-hue, hue) degrees; contrast goes first or last at random."""

    def __init__(
        self,
        brightness: float = 32,
        contrast: tuple[float, float] = (0.5, 1.5),
        saturation: tuple[float, float] = (0.5, 1.5),
        hue: float = 18,
    ) -> None:
        super().__init__()
        self.brightness, self.contrast = brightness, tuple(contrast)
        self.saturation, self.hue = tuple(saturation), hue

    def _contrast(self, image: torch.Tensor) -> torch.Tensor:
        if torch.rand(()).item() < 0.5:
            alpha = _uniform(*self.contrast)
            image = (image.float() * alpha).round().clamp(0, 255).to(torch.uint8)
        return image

    def forward(self, image, mask, depth=None):
        out = image.as_subclass(torch.Tensor)
        if torch.rand(()).item() < 0.5:
            delta = _uniform(-self.brightness, self.brightness)
            out = (out.float() + delta).round().clamp(0, 255).to(torch.uint8)
        contrast_first = torch.rand(()).item() < 0.5
        if contrast_first:
            out = self._contrast(out)
        if torch.rand(()).item() < 0.5:
            out = v2.functional.adjust_saturation(out, _uniform(*self.saturation))
        if torch.rand(()).item() < 0.5:
            out = v2.functional.adjust_hue(out, _uniform(-self.hue, self.hue) / 360)
        if not contrast_first:
            out = self._contrast(out)
        return _sample(tv_tensors.wrap(out, like=image), mask, depth)


class RandomGaussianBlur(torch.nn.Module):
    """Blur the image (not the mask) with probability p, sigma uniform in [low, high] pixels,
    kernel 2 * ceil(3 sigma) + 1 (capped by the image size)."""

    def __init__(self, p: float = 0.5, sigma: tuple[float, float] = (0.1, 2.0)) -> None:
        super().__init__()
        self.p, self.sigma = p, tuple(sigma)

    def forward(self, image, mask, depth=None):
        if torch.rand(()).item() >= self.p:
            return _sample(image, mask, depth)
        sigma = _uniform(*self.sigma)
        h, w = image.shape[-2:]
        largest = min(h, w) - 1 if min(h, w) % 2 == 0 else min(h, w)  # reflect padding < size
        kernel = max(1, min(2 * math.ceil(3 * sigma) + 1, largest))
        blurred = v2.functional.gaussian_blur(image, [kernel, kernel], [sigma, sigma])
        return _sample(blurred, mask, depth)


class ToModelInput(torch.nn.Module):
    """uint8 image -> normalised float (3, H, W); mask -> int64 (H, W). With depth (metres):
    (4, H, W), the normalised depth (seglab/data/depth.py) as the last channel."""

    def forward(self, image, mask, depth=None):
        image = v2.functional.to_dtype(image, torch.float32, scale=True)
        image = v2.functional.normalize(image, IMAGENET_MEAN, IMAGENET_STD)
        image = image.as_subclass(torch.Tensor)
        if depth is not None:
            image = torch.cat([image, normalize_depth(depth.as_subclass(torch.Tensor))[None]])
        return image, mask.as_subclass(torch.Tensor).long()


class JointTransform:
    """Wrap tensors as tv_tensors so that v2 transforms treat image, mask (and depth) jointly."""

    def __init__(self, transforms: list) -> None:
        self.transforms = v2.Compose(transforms)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, depth: torch.Tensor | None = None):
        if depth is None:
            return self.transforms(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return self.transforms(tv_tensors.Image(image), tv_tensors.Mask(mask), Depth(depth))


AUGMENT_KEYS = {
    "rotate": "max degrees, e.g. 10 (PSPNet)",
    "elastic": "true or {grid: 3, sigma: 10, p: 1.0} (U-Net)",
    "photometric": "true or {brightness: 32, contrast: [0.5, 1.5], saturation: [0.5, 1.5], "
    "hue: 18}",
    "blur": "probability, or {p: 0.5, sigma: [0.1, 2.0]}",
    "dihedral": "true: random 90-degree turns and vertical flips (orientation-free data)",
}
"""data.augment keys beyond crop/scale/flip, with the accepted values."""


def _options(key: str, value: Any, cls: type, shorthand: str | None = None) -> dict[str, Any]:
    """data.augment.<key> as keyword arguments for `cls`: true -> defaults, a number -> the
    `shorthand` argument, a dict -> checked against cls's parameters."""
    if value is True:
        return {}
    if isinstance(value, int | float) and not isinstance(value, bool) and shorthand:
        return {shorthand: float(value)}
    if isinstance(value, dict):
        import inspect

        allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            raise SeglabError(
                f"data.augment.{key}.{unknown[0]} is not an option; use: {', '.join(allowed)}"
            )
        return dict(value)
    raise SeglabError(f"data.augment.{key}={value!r}: expected {AUGMENT_KEYS[key]}")


def augment_steps(augment: dict[str, Any] | None) -> dict[str, torch.nn.Module]:
    """Parse data.augment into modules keyed by name; unknown keys are a one-line error.

    A key set to false, 0 or null is off.
    """
    augment = augment or {}
    if not isinstance(augment, dict):
        raise SeglabError(f"data.augment must be a mapping like {{rotate: 10}}, got {augment!r}")
    unknown = sorted(set(augment) - set(AUGMENT_KEYS))
    if unknown:
        raise SeglabError(
            f"data.augment.{unknown[0]} is not an augmentation; use: {', '.join(AUGMENT_KEYS)}"
        )
    steps: dict[str, torch.nn.Module] = {}
    on = {key: value for key, value in augment.items() if value not in (None, False, 0)}
    try:
        if "rotate" in on:
            if not isinstance(on["rotate"], int | float) or isinstance(on["rotate"], bool):
                raise SeglabError(f"data.augment.rotate={on['rotate']!r}: {AUGMENT_KEYS['rotate']}")
            steps["rotate"] = RandomRotation(float(on["rotate"]))
        if "elastic" in on:
            steps["elastic"] = ElasticDeformation(
                **_options("elastic", on["elastic"], ElasticDeformation)
            )
        if "photometric" in on:
            options = _options("photometric", on["photometric"], PhotometricDistortion)
            steps["photometric"] = PhotometricDistortion(**options)
        if "dihedral" in on:
            if on["dihedral"] is not True:
                raise SeglabError(
                    f"data.augment.dihedral={on['dihedral']!r}: {AUGMENT_KEYS['dihedral']}"
                )
            steps["dihedral"] = RandomDihedral()
        if "blur" in on:
            steps["blur"] = RandomGaussianBlur(
                **_options("blur", on["blur"], RandomGaussianBlur, "p")
            )
    except TypeError as error:  # a wrongly shaped option value, e.g. contrast: 3
        raise SeglabError(f"data.augment: {error}") from None
    return steps


def train_steps(
    crop_size: list[int] | None,
    scale_range: list[float] | None,
    hflip: bool,
    augment: dict[str, Any] | None = None,
) -> list[torch.nn.Module]:
    """The training chain before normalisation, in the papers' order: scale, rotate, elastic,
    crop (padded: image 0, mask 255), flip, dihedral, photometric, blur."""
    extra = augment_steps(augment)
    steps: list = []
    if scale_range:
        steps.append(RandomScale(*scale_range))
    steps += [extra[key] for key in ("rotate", "elastic") if key in extra]
    if crop_size:
        fill = {tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX, Depth: 0}
        steps.append(v2.RandomCrop(crop_size, pad_if_needed=True, fill=fill))
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    steps += [extra[key] for key in ("dihedral", "photometric", "blur") if key in extra]
    return steps


def train_transform(
    crop_size: list[int] | None,
    scale_range: list[float] | None,
    hflip: bool,
    augment: dict[str, Any] | None = None,
) -> JointTransform:
    """(3, H, W) uint8 image, (H, W) int64 mask -> augmented, normalised model input.

    augment: data.augment, e.g. {rotate: 10, photometric: true, blur: 0.5,
    elastic: {grid: 3, sigma: 10}}; see AUGMENT_KEYS.
    """
    return JointTransform([*train_steps(crop_size, scale_range, hflip, augment), ToModelInput()])


def eval_transform() -> JointTransform:
    return JointTransform([ToModelInput()])


def normalize_image(image: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) uint8 -> normalised float, as the models were trained."""
    image = v2.functional.to_dtype(image, torch.float32, scale=True)
    return v2.functional.normalize(image, IMAGENET_MEAN, IMAGENET_STD)
