"""The evaluation modes agree with whole-image inference where they must, and sliding-window
memory stays bounded by the output plus a constant."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from seglab.config import InferenceConfig
from seglab.errors import SeglabError
from seglab.inference import (
    overlap_tile_probabilities,
    predict_probabilities,
    slide_labels,
    slide_probabilities,
)
from seglab.models import create_model
from seglab.models.unet import UNet

K = 4
ROOT = Path(__file__).resolve().parents[1]


def pointwise_model() -> nn.Module:
    """Each output pixel sees only its own input pixel: any tiling must give the same map."""
    torch.manual_seed(0)
    return nn.Conv2d(3, K, 1).eval()


class LocalModel(nn.Sequential):
    """Two 3x3 convs: receptive field radius 2, zero padding at the borders of its input."""

    radius = 2

    def __init__(self, symmetric: bool = False) -> None:
        torch.manual_seed(1)
        super().__init__(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, K, 3, padding=1))
        if symmetric:  # kernels equal to their mirror image: the model commutes with flips
            with torch.no_grad():
                for conv in (self[0], self[2]):
                    conv.weight.copy_((conv.weight + conv.weight.flip(-1)) / 2)
        self.eval()


def whole(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(images).softmax(1)


def images_of(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("size", "window", "stride"),
    [
        ((40, 52), (16, 16), (12, 12)),  # overlaps, last window flush to the end
        ((32, 48), (16, 16), (16, 16)),  # no overlap
        ((37, 29), (16, 20), (5, 7)),  # sizes that divide nothing
        ((10, 12), (16, 16), (8, 8)),  # image smaller than the window: padded and cropped
    ],
)
def test_slide_equals_whole_for_a_pointwise_model(size, window, stride):
    model, images = pointwise_model(), images_of(2, 3, *size)
    with torch.no_grad():
        slid = slide_probabilities(model, images, window, stride, batch_size=3)
    assert slid.shape == (2, K, *size)
    torch.testing.assert_close(slid, whole(model, images), rtol=0, atol=1e-6)


def _trusted(size: int, starts: list[int], window: int, radius: int) -> torch.Tensor:
    """(size,) bool: pixels at least `radius` from the inner edges of every window covering
    them (an edge that is also the image's edge does not count: whole-image sees it too)."""
    good = torch.ones(size, dtype=torch.bool)
    for p in range(size):
        for s in starts:
            if s <= p < s + window:
                near_start = p - s < radius and s != 0
                near_end = s + window - 1 - p < radius and s + window != size
                good[p] &= not (near_start or near_end)
    return good


def test_slide_equals_whole_away_from_window_edges_for_a_local_model():
    """40 px with window 16 / stride 12 gives windows at 0, 12, 24 (written out by hand)."""
    model, images = LocalModel(), images_of(1, 3, 40, 40)
    with torch.no_grad():
        slid = slide_probabilities(model, images, (16, 16), (12, 12), batch_size=4)
    good = _trusted(40, [0, 12, 24], 16, LocalModel.radius)
    trusted = good[:, None] & good[None, :]
    reference = whole(model, images)
    assert 0.3 < trusted.float().mean() < 1
    torch.testing.assert_close(slid[..., trusted], reference[..., trusted], rtol=0, atol=1e-6)
    assert not torch.allclose(slid[..., ~trusted], reference[..., ~trusted], atol=1e-4)


def test_slide_treats_each_image_of_a_batch_like_a_batch_of_one():
    model, images = LocalModel(), images_of(3, 3, 30, 34)
    with torch.no_grad():
        together = slide_probabilities(model, images, (16, 16), (10, 10), batch_size=5)
        alone = [slide_probabilities(model, x[None], (16, 16), (10, 10), 1) for x in images]
    torch.testing.assert_close(together, torch.cat(alone), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("batch", "size", "window", "stride", "per_pass"),
    [
        (1, (40, 52), (16, 16), (12, 12), 4),
        (2, (37, 29), (16, 20), (5, 7), 3),  # several rows of windows per band
        (1, (50, 20), (16, 16), (16, 16), 1),
        (2, (10, 12), (16, 16), (8, 8), 8),  # smaller than the window
    ],
)
def test_streamed_slide_labels_equal_the_argmax_of_slide_probabilities(
    batch, size, window, stride, per_pass
):
    model, images = LocalModel(), images_of(batch, 3, *size)
    with torch.no_grad():
        expected = slide_probabilities(model, images, window, stride, per_pass).argmax(1)
    labels = slide_labels(model, images, window, stride, per_pass)
    assert labels.dtype == torch.uint8 and labels.shape == (batch, *size)
    assert torch.equal(labels.long(), expected)


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_single_scale_without_flip_equals_whole(mode):
    model, images = pointwise_model(), images_of(2, 3, 24, 30)
    cfg = InferenceConfig(mode=mode, crop_size=[16, 16], scales=[1.0], flip=False)
    torch.testing.assert_close(
        predict_probabilities(model, images, cfg), whole(model, images), rtol=0, atol=1e-6
    )


def test_flip_averaging_of_a_flip_equivariant_model_changes_nothing():
    model, images = LocalModel(symmetric=True), images_of(1, 3, 20, 27)
    flipped = predict_probabilities(model, images, InferenceConfig(flip=True))
    torch.testing.assert_close(flipped, whole(model, images), rtol=0, atol=1e-6)


def test_flip_averages_the_prediction_and_the_unflipped_prediction_of_the_mirror():
    model, images = LocalModel(), images_of(1, 3, 20, 27)
    expected = (whole(model, images) + whole(model, images.flip(-1)).flip(-1)) / 2
    flipped = predict_probabilities(model, images, InferenceConfig(flip=True))
    torch.testing.assert_close(flipped, expected, rtol=0, atol=1e-6)
    assert not torch.allclose(flipped, whole(model, images), atol=1e-4)


def test_multi_scale_averages_probabilities_resized_to_the_input():
    model, images = pointwise_model(), images_of(1, 3, 24, 32)
    half = F.interpolate(images, (12, 16), mode="bilinear", align_corners=False)
    half_probs = F.interpolate(whole(model, half), (24, 32), mode="bilinear", align_corners=False)
    expected = (half_probs + whole(model, images)) / 2
    result = predict_probabilities(model, images, InferenceConfig(scales=[0.5, 1.0]))
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-6)


def test_overlap_tiles_join_seamlessly_into_the_whole_image_prediction():
    """U-Net with valid convs: tiles predicted from their real context equal one big tile."""
    torch.manual_seed(0)
    model = UNet(K, in_channels=3, width=4, depth=2, padding="valid").eval()
    images = images_of(1, 3, 30, 44)
    with torch.no_grad():
        tiled = overlap_tile_probabilities(model, images, [12, 16])
        one_tile = overlap_tile_probabilities(model, images, None)
    assert tiled.shape == (1, K, 30, 44)
    torch.testing.assert_close(tiled, one_tile, rtol=0, atol=1e-5)
    torch.testing.assert_close(one_tile, whole(model, images), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_slide_peak_memory_beyond_the_output_does_not_grow_with_image_size():
    """Measured in fresh processes by benchmarks/large_image_memory.py (resident-set high-water
    mark during the call). Growing the image 4x in area must not grow what the call needs
    beyond its (1, K, H, W) output; before the rewrite, 1024 -> 2048 added 92 MiB."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from large_image_memory import measure_in_subprocess
    finally:
        sys.path.pop(0)
    small, large = (
        measure_in_subprocess(size, classes=K, window=256, batch=4, model="conv")
        for size in (1024, 2048)
    )
    mib = 2**20
    growth = (large["beyond_output_bytes"] - small["beyond_output_bytes"]) / mib
    assert large["output_bytes"] == 4 * small["output_bytes"]
    assert growth < 8, f"memory beyond the output grew by {growth:.0f} MiB"
    assert large["beyond_output_bytes"] < large["output_bytes"] / 2


@pytest.mark.slow
def test_streamed_slide_labels_memory_grows_with_the_width_only():
    """slide_labels holds a (1, K, window, W) band of probabilities, not all of them: from
    1024^2 to 2048^2 its peak may grow by the band's growth (plus the carried-over copy),
    8 MiB here, while the (1, K, H, W) map it avoids would grow by 48 MiB."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from large_image_memory import measure_in_subprocess
    finally:
        sys.path.pop(0)
    small, large = (
        measure_in_subprocess(size, K, window=256, batch=4, model="conv", function="labels")
        for size in (1024, 2048)
    )
    mib = 2**20
    band_growth = 2 * K * 256 * (2048 - 1024) * 4
    growth = large["extra_bytes"] - small["extra_bytes"]
    assert large["output_bytes"] == 2048 * 2048  # uint8 labels
    assert growth < band_growth + 4 * mib, f"peak grew by {growth / mib:.1f} MiB"


@pytest.mark.slow
def test_memory_benchmark_runs_as_a_script():
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "large_image_memory.py"), "--sizes", "256",
         "--model", "conv", "--window", "128", "--no-write"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("| slide_probabilities | 256x256 |")


def test_a_stride_larger_than_the_window_is_a_one_line_error():
    model, images = pointwise_model(), images_of(1, 3, 40, 40)
    for slide in (slide_probabilities, slide_labels):
        with pytest.raises(SeglabError, match=r"inference.stride \[20, 8\] must be 1..crop_size"):
            slide(model, images, (16, 16), (20, 8), 4)


def test_overlap_tile_mode_refuses_a_model_without_valid_convolutions():
    # It used to fall back to whole-image inference without a word.
    model = create_model("unet", num_classes=2, in_channels=3, width=4, depth=2, padding="same")
    with pytest.raises(SeglabError, match="overlap_tile needs a model with valid convolutions"):
        overlap_tile_probabilities(model.eval(), torch.zeros(1, 3, 16, 16), None)
