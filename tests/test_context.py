"""Dilated front-end + context module: identity initialisation, geometry, short training."""

from __future__ import annotations

import pytest
import torch
from short_training import short_training_scores

from seglab.models import create_model
from seglab.models.context import ContextModule, identity_init_


def test_basic_context_module_passes_its_input_through_exactly():
    module = ContextModule(5, (1,) * 8)
    x = torch.rand(2, 5, 17, 23)  # class scores after the ReLUs are non-negative
    with torch.no_grad():
        assert torch.equal(module(x), x)


def test_large_context_module_passes_its_input_through_up_to_the_init_noise():
    torch.manual_seed(0)
    module = ContextModule(4, (2, 2, 4, 8, 16, 32, 32, 1), noise=1e-3)
    x = torch.rand(1, 4, 40, 40)
    with torch.no_grad():
        out = module(x)
    assert (out - x).abs().max() < 0.05
    noiseless = ContextModule(4, (2, 2, 4, 8, 16, 32, 32, 1), noise=0.0)
    with torch.no_grad():
        assert torch.allclose(noiseless(x), x, atol=1e-6)


def test_identity_init_follows_the_papers_equation_for_differing_widths():
    # C = 3 classes, c_i = 6 inputs, c_{i+1} = 12 outputs: centre tap C / 12 where
    # floor(a * 3 / 6) == floor(b * 3 / 12), i.e. a // 2 == b // 4; every other weight 0
    conv = torch.nn.Conv2d(6, 12, 3, padding=1)
    identity_init_(conv, 3)
    expected = torch.zeros(12, 6, 3, 3)
    for b in range(12):
        for a in range(6):
            if a // 2 == b // 4:
                expected[b, a, 1, 1] = 3 / 12
    assert torch.equal(conv.weight, expected)
    assert torch.equal(conv.bias, torch.zeros(12))


def test_front_end_is_vgg16_without_pool4_pool5_at_output_stride_8():
    with torch.device("meta"):
        model = create_model("dilated_context", num_classes=21, context="none")
    assert model.encoder.strides == [2, 4, 8, 8, 8]
    assert model.encoder.conv5_1.conv.dilation == (2, 2)
    assert model.fc6.conv.kernel_size == (7, 7) and model.fc6.conv.dilation == (4, 4)
    assert model.fc6.conv.out_channels == model.fc7.conv.out_channels == 4096
    assert model.context is None


def test_context_dilations_and_widths_are_the_papers():
    module = ContextModule(21, (2, 2, 4, 8, 16, 32, 32, 1))
    convs = [getattr(module, name) for name in module.layer_names]
    dilations = [c.conv.dilation[0] for c in convs[:-1]]
    assert dilations == [1, 1, 2, 4, 8, 16, 1]
    assert [c.conv.out_channels for c in convs[:-1]] == [42, 42, 84, 168, 336, 672, 672]
    assert convs[-1].kernel_size == (1, 1) and convs[-1].out_channels == 21


def test_unknown_context_is_an_error():
    with pytest.raises(ValueError, match="context must be"):
        create_model("dilated_context", num_classes=3, context="huge", width=8)


def test_short_training_beats_chance(shapes_root, tmp_path):
    # Front-end and context module trained together from scratch (the paper trains the context
    # module on a trained front-end): with He-initialised VGG convs and BN, 100 steps reach
    # about 0.57 mean accuracy; the bar is 2x chance (1/6), as for the other models.
    options = "{width: 8, context: basic, batch_norm: true, dropout: 0.1}"
    scores = short_training_scores(
        shapes_root, tmp_path / "run", "dilated_context", options, iters=100
    )
    assert scores["mean_accuracy"] > 2 / 6, scores
