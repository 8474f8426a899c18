"""U-Net: the paper's valid-padding geometry and overlap-tile inference."""

import pytest
import torch

from seglab.config import InferenceConfig
from seglab.inference import predict_probabilities
from seglab.models import MODELS, create_model


def test_unet_default_in_channels_is_the_papers_one():
    # The paper segments grayscale microscopy; RGB callers pass in_channels=3.
    model = create_model("unet", num_classes=2)
    assert model.contracting[0].conv1.conv.in_channels == 1
    assert model.seglab_spec["in_channels"] == 1
    assert "in_channels" not in MODELS["unet"].options()


def test_valid_unet_maps_a_572_tile_to_388():
    model = create_model("unet", num_classes=2, in_channels=1)
    assert model.output_size(572) == 388
    assert model.tile_input_size(388) == 572
    assert model.output_size(571) is None  # odd size before a pool is not a valid tile


def test_valid_unet_has_23_convolutions():
    model = create_model("unet", num_classes=2, in_channels=1)
    convs = [
        m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)
    ]
    assert len(convs) == 23


def test_forward_tile_of_a_small_valid_unet_shrinks_by_the_margin():
    model = create_model("unet", num_classes=2, in_channels=3, width=2, depth=2)
    # depth 2: 2 pools; in 44: 40 -> 20, 16 -> 8, 4 -> 8 - 4 = 4 ... worked out by output_size
    size = model.tile_input_size(20)
    out = model.forward_tile(torch.randn(1, 3, size, size))
    assert out.shape[-1] == model.output_size(size) >= 20


@pytest.mark.parametrize("tile", [(16, 16), (24, 40)])
def test_overlap_tile_equals_one_pass_over_the_whole_mirror_padded_image(tile):
    """Tiles see their real neighbours (mirrored only at the image border), so tiling is exact."""
    torch.manual_seed(0)
    model = create_model("unet", num_classes=3, in_channels=3, width=4, depth=2, dropout=0.0).eval()
    image = torch.randn(1, 3, 53, 71)
    whole = predict_probabilities(model, image, InferenceConfig(mode="whole"))
    tiled = predict_probabilities(
        model, image, InferenceConfig(mode="overlap_tile", crop_size=list(tile))
    )
    assert tiled.shape == (1, 3, 53, 71)
    assert torch.allclose(whole, tiled, atol=1e-5)


def test_same_padding_unet_keeps_odd_sizes():
    model = create_model("unet", num_classes=2, in_channels=3, width=4, padding="same").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 33, 47)).shape == (1, 2, 33, 47)
