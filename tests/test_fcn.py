"""FCN facts from the paper: bilinear deconvolutions, zero-initialised scores, crops."""

import pytest
import torch
import torch.nn.functional as F

from seglab.models import count_parameters, create_model
from seglab.nn import BilinearDeconv, bilinear_kernel


def test_bilinear_kernel_matches_hand_values():
    # k=4 (factor 2): 1 - |x - 1.5| / 2 at x = 0..3
    row = torch.tensor([0.25, 0.75, 0.75, 0.25])
    assert torch.allclose(bilinear_kernel(4), row[:, None] * row[None, :])


def test_bilinear_deconv_upsamples_like_bilinear_interpolation_in_the_interior():
    x = torch.randn(1, 2, 6, 7)
    deconv = BilinearDeconv(2, 4, 2, padding=1)
    reference = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    up = deconv(x)
    assert up.shape == reference.shape
    # Borders differ (zero padding vs edge clamping); the interior is the same filter.
    assert torch.allclose(up[..., 1:-1, 1:-1], reference[..., 1:-1, 1:-1], atol=1e-5)
    # Off-diagonal (class-to-other-class) weights are zero and the weights are frozen.
    assert deconv.weight[0, 1].abs().sum() == 0 and not deconv.weight.requires_grad


@pytest.mark.parametrize(
    "stride,deconv_params", [(32, 21 * 21 * 64 * 64), (16, 21 * 21 * (16 + 32 * 32)), (8, 127_008)]
)
def test_frozen_deconvolutions_hold_the_papers_extra_parameters(stride, deconv_params):
    with torch.device("meta"):
        model = create_model(f"fcn{stride}s", num_classes=21)
    frozen = count_parameters(model, learnable_only=False) - count_parameters(model)
    assert frozen == deconv_params


def test_score_layers_start_at_zero_so_initial_logits_are_zero():
    model = create_model("fcn8s", num_classes=4, width=8).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).abs().max() == 0


@pytest.mark.parametrize("stride", [32, 16, 8])
@pytest.mark.parametrize("size", [(97, 131), (500, 375)])
def test_pad100_reference_geometry_crops_to_input_size(stride, size):
    model = create_model(f"fcn{stride}s", num_classes=3, width=4, pad100=True).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, 3, *size)
    assert model.encoder.conv1_1.conv.padding == (100, 100)
    assert model.fc6.conv.padding == (0, 0)
