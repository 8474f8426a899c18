"""Joint augmentations keep image and mask aligned.

The fixture is a "palette image": the mask is a map of class ids in blocks and the image is
each id's colour, so after any geometric transform the image, read back through the palette,
must give the mask again (away from edges, where interpolation blends colours).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torchvision import tv_tensors

from seglab.data.labels import IGNORE_INDEX
from seglab.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    JointTransform,
    PhotometricDistortion,
    RandomGaussianBlur,
    elastic_pair,
    rotate_pair,
    train_steps,
    train_transform,
)
from seglab.errors import SeglabError

# Colours far apart in RGB, so the nearest palette entry survives interpolation inside a region.
PALETTE = torch.tensor(
    [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255]],
    dtype=torch.uint8,
)
INPUT_LABELS = (0, 1, 2, 3, 5)  # 4 never occurs: the output must not invent it


def palette_pair(h: int = 48, w: int = 64, block: int = 8, seed: int = 0):
    """(3, H, W) uint8 image = PALETTE[mask]; (H, W) int64 mask of block x block regions."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor(INPUT_LABELS)
    coarse = labels[torch.randint(len(labels), (h // block + 1, w // block + 1), generator=g)]
    mask = coarse.repeat_interleave(block, 0).repeat_interleave(block, 1)[:h, :w]
    image = PALETTE[mask].permute(2, 0, 1).contiguous()
    return image, mask


def labels_from_colours(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) uint8 -> (H, W) id of the nearest palette colour."""
    distances = (image.permute(1, 2, 0).float()[..., None, :] - PALETTE.float()).norm(dim=-1)
    return distances.argmin(-1)


def interior(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """(H, W) bool: pixels whose (2r+1)^2 neighbourhood holds one label, not 255, and lies
    inside the image."""
    m = mask.numpy()
    uniform = (ndimage.maximum_filter(m, 2 * radius + 1) == m) & (
        ndimage.minimum_filter(m, 2 * radius + 1) == m
    )
    inside = np.zeros_like(uniform)
    inside[radius : m.shape[0] - radius, radius : m.shape[1] - radius] = True
    return torch.from_numpy(uniform & inside & (m != IGNORE_INDEX))


def assert_aligned(image: torch.Tensor, mask: torch.Tensor, radius: int = 2, min_pixels=100):
    """Away from label edges the image's colour names the mask's label."""
    assert image.dtype == torch.uint8 and image.shape[-2:] == mask.shape
    values = set(mask.unique().tolist())
    assert values <= set(INPUT_LABELS) | {IGNORE_INDEX}, values
    inner = interior(mask, radius)
    assert inner.sum() >= min_pixels  # the check must see a real part of the image
    agree = labels_from_colours(image)[inner] == mask[inner]
    assert agree.float().mean() == 1.0, f"{(~agree).sum()} interior pixels disagree"


def run_steps(steps, image, mask, seed: int):
    torch.manual_seed(seed)
    out_image, out_mask = JointTransform(steps)(image, mask)
    return out_image.as_subclass(torch.Tensor), out_mask.as_subclass(torch.Tensor)


def test_the_alignment_check_catches_a_shifted_mask():
    image, mask = palette_pair()
    assert_aligned(image, mask)
    with pytest.raises(AssertionError):
        assert_aligned(image, mask.flip(-1))
    with pytest.raises(AssertionError):
        assert_aligned(image, torch.roll(mask, 4, dims=0))


GEOMETRIC = {
    "scale": ([None, [0.5, 1.75], False], {}),
    "crop": ([[40, 40], None, False], {}),
    "flip": ([None, None, True], {}),
    "rotate": ([None, None, False], {"rotate": 10}),
    "elastic": ([None, None, False], {"elastic": {"grid": 3, "sigma": 10}}),
    "dihedral": ([None, None, True], {"dihedral": True}),
    "all": ([[56, 56], [0.75, 1.5], True], {"rotate": 10, "elastic": True}),
}


@pytest.mark.parametrize("name", list(GEOMETRIC))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_geometric_transforms_keep_image_and_mask_aligned(name, seed):
    args, augment = GEOMETRIC[name]
    image, mask = palette_pair(seed=seed)
    out_image, out_mask = run_steps(train_steps(*args, augment=augment), image, mask, seed)
    assert_aligned(out_image, out_mask, min_pixels=300)


def test_crop_larger_than_the_image_pads_mask_with_ignore_and_image_with_zero():
    image, mask = palette_pair(h=20, w=30)
    mask[mask == 0] = 1  # so that 0 can only come from the padding in the image
    image = PALETTE[mask].permute(2, 0, 1).contiguous()
    out_image, out_mask = run_steps(train_steps([32, 40], None, False), image, mask, 0)
    assert out_mask.shape == (32, 40)
    assert (out_mask == IGNORE_INDEX).sum() == 32 * 40 - 20 * 30
    assert (out_image.sum(0) == 0).sum() == 32 * 40 - 20 * 30
    assert torch.equal(out_image.sum(0) == 0, out_mask == IGNORE_INDEX)


def test_rotation_by_90_degrees_matches_rot90_and_10_degrees_ignores_the_corners():
    image, mask = palette_pair(h=32, w=32)
    r_image, r_mask = rotate_pair(tv_tensors.Image(image), tv_tensors.Mask(mask), 90.0)
    assert torch.equal(r_mask, torch.rot90(mask, 1, dims=(0, 1)))
    assert torch.equal(r_image, torch.rot90(image, 1, dims=(1, 2)))
    _, r_mask = rotate_pair(tv_tensors.Image(image), tv_tensors.Mask(mask), 10.0)
    assert all(r_mask[y, x] == IGNORE_INDEX for y in (0, -1) for x in (0, -1))
    assert torch.equal(r_mask[14:18, 14:18], mask[14:18, 14:18])  # the centre stays


def test_dihedral_draws_the_eight_symmetries_of_the_square_and_only_two_turns_otherwise():
    from seglab.data.transforms import RandomDihedral

    image, mask = palette_pair(h=32, w=32)
    # the 8 symmetries written out: k quarter turns of the mask, each with or without a flip
    expected = {
        (torch.rot90(mask, k, dims=(0, 1)).flip(0) if flip else torch.rot90(mask, k, (0, 1)))
        .numpy()
        .tobytes()
        for k in range(4)
        for flip in (False, True)
    }
    seen = set()
    for seed in range(64):
        out_image, out_mask = run_steps([RandomDihedral()], image, mask, seed)
        assert_aligned(out_image, out_mask)
        seen.add(out_mask.numpy().tobytes())
    assert seen == expected
    wide_image, wide_mask = palette_pair(h=24, w=40)
    shapes = {run_steps([RandomDihedral()], wide_image, wide_mask, s)[1].shape for s in range(16)}
    assert shapes == {(24, 40)}
    with pytest.raises(SeglabError, match="dihedral"):
        train_steps(None, None, False, augment={"dihedral": 3})


def test_elastic_with_zero_displacement_is_the_identity():
    image, mask = palette_pair()
    out_image, out_mask = elastic_pair(
        tv_tensors.Image(image), tv_tensors.Mask(mask), torch.zeros(2, 3, 3)
    )
    assert torch.equal(out_image, image) and torch.equal(out_mask, mask)


def test_elastic_moves_pixels_by_the_interpolated_displacement():
    """A uniform grid of (dy, dx) = (0, 3) shifts everything 3 px left (output p = input p+3)."""
    image, mask = palette_pair()
    shift = torch.zeros(2, 3, 3)
    shift[1] = 3.0
    out_image, out_mask = elastic_pair(tv_tensors.Image(image), tv_tensors.Mask(mask), shift)
    assert torch.equal(out_mask[:, :-3], mask[:, 3:])
    assert torch.equal(out_image[:, :, :-3], image[:, :, 3:])


def test_photometric_and_blur_change_the_image_only():
    image, mask = palette_pair()
    for step in (PhotometricDistortion(), RandomGaussianBlur(p=1.0)):
        changed = False
        for seed in range(4):
            out_image, out_mask = run_steps([step], image, mask, seed)
            assert torch.equal(out_mask, mask)
            assert out_image.dtype == torch.uint8 and out_image.shape == image.shape
            changed |= not torch.equal(out_image, image)
        assert changed, f"{type(step).__name__} never changed the image"


def test_blur_keeps_colours_inside_regions():
    image, mask = palette_pair()
    out_image, out_mask = run_steps(train_steps(None, None, False, {"blur": 1.0}), image, mask, 0)
    assert_aligned(out_image, out_mask, radius=3)


def test_train_transform_keeps_its_signature_and_returns_model_input():
    image, mask = palette_pair()
    augment = {"rotate": 10, "photometric": True, "blur": 0.5, "elastic": {"grid": 3, "sigma": 10}}
    for transform in (
        train_transform([32, 32], [0.5, 2.0], True),
        train_transform([32, 32], [0.5, 2.0], True, augment=augment),
    ):
        torch.manual_seed(0)
        x, y = transform(image, mask)
        assert type(x) is torch.Tensor and x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert type(y) is torch.Tensor and y.shape == (32, 32) and y.dtype == torch.int64
        assert set(y.unique().tolist()) <= set(INPUT_LABELS) | {IGNORE_INDEX}
    # normalisation is ImageNet's: undoing it gives the uint8 colours back
    x, _ = train_transform(None, None, False)(image, mask)
    mean, std = (
        torch.tensor(IMAGENET_MEAN)[:, None, None],
        torch.tensor(IMAGENET_STD)[:, None, None],
    )
    assert torch.equal(((x * std + mean) * 255).round().to(torch.uint8), image)


def test_seeded_augmentation_is_reproducible():
    image, mask = palette_pair()
    steps = train_steps([40, 40], [0.5, 2.0], True, {"rotate": 10, "elastic": True, "blur": 0.5})
    first, second = run_steps(steps, image, mask, 7), run_steps(steps, image, mask, 7)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@pytest.mark.parametrize(
    ("augment", "message"),
    [
        ({"rotation": 10}, "data.augment.rotation is not an augmentation; use: rotate"),
        ({"elastic": {"std": 10}}, "data.augment.elastic.std is not an option; use: grid, sigma"),
        ({"rotate": "ten"}, "data.augment.rotate='ten'"),
        ({"photometric": 3}, "data.augment.photometric=3"),
        ({"elastic": {"grid": 1}}, "use 2 or more control points"),
        ([1, 2], "data.augment must be a mapping"),
    ],
)
def test_bad_augment_entries_are_one_line_errors(augment, message):
    with pytest.raises(SeglabError) as error:
        train_transform(None, None, False, augment=augment)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_augment_entries_set_to_false_or_zero_are_off():
    steps = train_steps(None, None, False, {"rotate": 0, "photometric": False, "blur": None})
    assert steps == []
