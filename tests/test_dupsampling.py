"""DUpsampling: the fitted W, its reconstruction, the layer's channel order, the trainer hook."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seglab.models import count_parameters, create_model
from seglab.models.dupsampling import (
    DUpsampling,
    bilinear_reconstruction_miou,
    fit_dupsampling_matrix,
    label_patches,
    one_hot_patches,
    reconstruction_miou,
)


class Masks:
    """The part of a dataset the fitting reads: load(i) -> (image, mask)."""

    def __init__(self, masks: list[np.ndarray]) -> None:
        self.masks = masks

    def __len__(self) -> int:
        return len(self.masks)

    def load(self, index: int):
        return None, self.masks[index]


# Three 2x2 patterns over classes {0, 1, 2}: all 0, all 1, left column 2 / right column 0.
PATTERNS = [np.zeros((2, 2), np.uint8), np.ones((2, 2), np.uint8), np.array([[2, 0], [2, 0]])]


def tiled(pattern_ids: np.ndarray) -> np.ndarray:
    """A mask made of PATTERNS, pattern_ids[i, j] at patch (i, j)."""
    return np.block([[PATTERNS[p] for p in row] for row in pattern_ids]).astype(np.uint8)


def test_w_rebuilds_a_label_map_exactly_when_its_patches_span_few_patterns():
    rng = np.random.default_rng(0)
    masks = [tiled(rng.integers(0, 3, (4, 5))) for _ in range(3)]
    # Three distinct patch vectors span a 3-dimensional space: C' = 3 loses nothing.
    basis = fit_dupsampling_matrix(Masks(masks), ratio=2, num_classes=3, features=3)
    v = one_hot_patches(torch.from_numpy(label_patches(masks[0], 2)), 3)
    assert torch.allclose(v @ basis @ basis.T, v, atol=1e-5)
    assert reconstruction_miou(Masks(masks), basis, 2, 3) == pytest.approx(1.0)
    # Two numbers cannot hold three independent patterns.
    two = fit_dupsampling_matrix(Masks(masks), ratio=2, num_classes=3, features=2)
    assert reconstruction_miou(Masks(masks), two, 2, 3) < 1.0


def test_fitted_w_is_orthonormal_and_the_least_squares_optimum():
    rng = np.random.default_rng(1)
    masks = [rng.integers(0, 4, (8, 12)).astype(np.uint8) for _ in range(2)]
    masks[0][:3, :5] = 255  # ignored pixels are zero vectors
    basis = fit_dupsampling_matrix(Masks(masks), ratio=2, num_classes=4, features=5)
    assert basis.shape == (4 * 2 * 2, 5)
    assert torch.allclose(basis.T @ basis, torch.eye(5), atol=1e-5)
    # Eckart-Young: the residual of the best rank-5 projection of the patch matrix is the sum
    # of its discarded squared singular values (numpy SVD of every patch, no deduplication).
    v = np.concatenate([one_hot_patches(torch.from_numpy(label_patches(m, 2)), 4) for m in masks])
    singular = np.linalg.svd(v.astype(np.float64), compute_uv=False)
    residual = ((v - v @ basis.numpy() @ basis.numpy().T) ** 2).sum()
    assert residual == pytest.approx((singular[5:] ** 2).sum(), rel=1e-4)


def test_dupsampling_layer_puts_channel_c_r_r_plus_p_at_patch_pixel_p():
    layer = DUpsampling(features=3 * 4, ratio=2, num_classes=3)
    layer.basis.copy_(torch.eye(12))  # W = I: the layer is plain depth-to-space
    x = torch.zeros(1, 12, 1, 1)
    x[0, 1 * 4 + 2] = 1.0  # class 1, patch pixel 2 = row 1, column 0
    out = layer(x)
    assert out.shape == (1, 3, 2, 2)
    assert out[0, 1, 1, 0] == 1 and out.sum() == 1


def test_w_beats_bilinear_upsampling_on_thin_structures():
    # One-pixel lines at stride 4: averaging blurs them below the background, W keeps them.
    mask = np.zeros((16, 16), np.uint8)
    mask[:, 1::4] = 1
    mask[2::8, :] = 2
    data = Masks([mask])
    basis = fit_dupsampling_matrix(data, ratio=4, num_classes=3, features=8)
    assert reconstruction_miou(data, basis, 4, 3) == pytest.approx(1.0)
    assert bilinear_reconstruction_miou(data, 4, 3) < 0.6


def test_paper_configuration_parameters_derived_by_hand():
    # ResNet-50 without fc: torchvision's 25,557,032 - (2048 * 1000 + 1000) = 23,508,032.
    resnet50 = 25_557_032 - 2_049_000
    low_level = (256 + 512) * 48 + 2 * 48  # 1x1 conv on layer1 + layer2, no bias, BN
    fuse = (2048 + 48) * 256 * 9 + 2 * 256 + 256 * 256 * 9 + 2 * 256  # two 3x3 + BN
    compress = 256 * 256 + 256  # 1x1 to C' = 256 with bias
    temperature = 1
    with torch.device("meta"):
        model = create_model("dupsampling", num_classes=21)
    assert count_parameters(model) == resnet50 + low_level + fuse + compress + temperature
    # W is a buffer: stored with the weights, never a parameter.
    assert model.state_dict()["dupsample.basis"].shape == (21 * 16 * 16, 256)


def test_fit_from_data_fits_once_and_the_weights_keep_w(tmp_path):
    from seglab.weights import load_weights, save_weights

    model = create_model("dupsampling", 3, 3, encoder="resnet18", output_stride=8,
                         decoder_channels=8, features=16)  # fmt: skip
    masks = Masks([np.repeat(np.arange(3, dtype=np.uint8), 16)[None].repeat(8, 0)])
    report = model.fit_from_data(masks, masks)
    assert "100.00 mIoU" in report and bool(model.dupsample.fitted)
    assert model.fit_from_data(masks, masks) is None  # already fitted: kept
    save_weights(model, tmp_path / "w.safetensors")
    loaded, _ = load_weights(tmp_path / "w.safetensors")
    assert torch.equal(loaded.dupsample.basis, model.dupsample.basis)
    assert bool(loaded.dupsample.fitted)


def test_temperature_scales_the_logits():
    torch.manual_seed(0)
    model = create_model("dupsampling", 3, 3, encoder="resnet18", output_stride=8,
                         decoder_channels=8, features=16).eval()  # fmt: skip
    x = torch.randn(1, 3, 37, 45)
    with torch.no_grad():
        before = model(x)
        model.temperature.fill_(2.0)
        assert torch.allclose(model(x), before / 2, atol=1e-6)
    assert before.shape == (1, 3, 37, 45)


def test_trainer_fits_w_before_the_first_step_and_short_training_learns(shapes_root, tmp_path):
    from short_training import short_training_scores

    from seglab.weights import load_weights

    scores = short_training_scores(
        shapes_root, tmp_path / "run", "dupsampling",
        "{encoder: resnet18, output_stride: 8, decoder_channels: 32, features: 64}", 60,
    )  # fmt: skip
    model, _ = load_weights(tmp_path / "run" / "final.safetensors")
    assert bool(model.dupsample.fitted)
    basis = model.dupsample.basis
    assert torch.allclose(basis.T @ basis, torch.eye(64), atol=1e-4)
    assert scores["mean_iou"] > 1 / 6 * 0.5, scores  # chance: a sixth of the pixels right


def test_one_hot_patches_ignore_is_zero():
    v = one_hot_patches(torch.tensor([[0, 255, 1, 1]]), 2)
    assert v.tolist() == [[1, 0, 0, 0, 0, 0, 1, 1]]
    assert F.pixel_unshuffle(torch.zeros(1, 2, 4, 4), 2).shape == (1, 8, 2, 2)


def test_the_bilinear_baseline_is_the_same_network_with_a_class_conv_and_bilinear_upsampling():
    options = {"encoder": "resnet18", "output_stride": 8, "decoder_channels": 32, "features": 16}
    torch.manual_seed(0)
    dup = create_model("dupsampling", 5, 3, **options)
    torch.manual_seed(0)
    bilinear = create_model("dupsampling", 5, 3, upsampling="bilinear", **options)
    # Only the last 1x1 conv differs: 32 -> C' = 16 (+ bias) and T, against 32 -> K = 5 (+ bias).
    assert count_parameters(dup) - count_parameters(bilinear) == (32 * 16 + 16 + 1) - (32 * 5 + 5)
    assert bilinear.dupsample is None and bilinear.fit_from_data(None) is None
    bilinear.eval()
    x = torch.randn(2, 3, 30, 44)  # not a multiple of 8: padded, then cropped
    with torch.no_grad():
        out = bilinear(x)
        assert out.shape == (2, 5, 30, 44)
        # A constant class map upsamples to itself: zero the class conv but its biases.
        bilinear.compress.weight.zero_()
        bilinear.compress.bias.copy_(torch.arange(5.0))
        assert torch.equal(bilinear(x), torch.arange(5.0)[None, :, None, None].expand(2, 5, 30, 44))
