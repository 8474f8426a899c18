"""The fast inference variants (seglab/fast_inference.py) give eager's labels and probabilities.

The reference is computed here independently: softmax of the unchanged model's logits on the
normalised image, with nothing from seglab.inference in between. BN statistics are randomised
first, so folding a BN into its conv changes the weights for real (a fresh BN is an identity
that folding could not get wrong).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seglab import create_model
from seglab.config import InferenceConfig
from seglab.data.transforms import normalize_image
from seglab.errors import SeglabError
from seglab.fast_inference import prepare_for_inference
from seglab.inference import Segmenter
from seglab.models.base import main_logits
from seglab.models.registry import MODELS
from seglab.nn.fold_batchnorm import count_batchnorms

# (name, BatchNorm layers in the small model): two with BN, one without
CASES = [("segnet", True), ("deeplabv3", True), ("fcn8s", False)]


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(name, 3, 3, **MODELS[name].small_options).eval()
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            c = module.num_features
            module.running_mean.copy_(torch.randn(c, generator=generator) * 0.3)
            module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(c, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(c, generator=generator) * 0.2)
    return model


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(2)
    return [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(2)]


def _eager_probabilities(model: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    x = normalize_image(torch.from_numpy(image).permute(2, 0, 1)[None])
    with torch.no_grad():
        return main_logits(model(x)).softmax(1)[0].numpy()


@pytest.mark.parametrize(("name", "has_bn"), CASES)
@pytest.mark.parametrize(
    ("variant", "backend"), [("auto", "torch"), ("eager", "torch"), ("auto", "onnxruntime")]
)
def test_variant_gives_eager_labels_and_probabilities(name, has_bn, variant, backend):
    model = _model(name)
    assert (count_batchnorms(model) > 0) == has_bn
    segmenter = Segmenter(model, device="cpu", variant=variant, backend=backend)
    for image in _images():
        expected = _eager_probabilities(model, image)
        probs = segmenter.predict(image, probabilities=True)
        np.testing.assert_allclose(probs, expected, atol=1e-4, rtol=0)
        np.testing.assert_array_equal(segmenter.predict(image), expected.argmax(0))
    if variant == "auto" and backend == "torch":
        assert count_batchnorms(segmenter.runner.module) == 0  # every BN really folded
        assert ("BN folded" in segmenter.variant) == has_bn
    if backend == "onnxruntime":
        assert segmenter.variant.startswith("onnxruntime")


def test_channels_last_and_slide_windows_give_eager_probabilities():
    model = _model("segnet")
    runner, description = prepare_for_inference(model, "cpu", channels_last=True)
    assert "channels_last on" in description
    image = _images()[0]
    expected = _eager_probabilities(model, image)
    x = normalize_image(torch.from_numpy(image).permute(2, 0, 1)[None])
    with torch.inference_mode():
        probs = runner(x).softmax(1)[0].numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-4, rtol=0)
    # slide windows of 32x32 run the prepared model too; on a window the model sees only it
    slide = InferenceConfig(mode="slide", crop_size=[48, 32], stride=[48, 32])
    segmenter = Segmenter(model, device="cpu", inference=slide)
    left = _eager_probabilities(model, np.ascontiguousarray(image[:, :32]))
    np.testing.assert_allclose(segmenter.predict(image, True)[:, :, :32], left, atol=1e-4)


def test_the_original_model_is_unchanged_and_bad_choices_are_one_line_errors():
    model = _model("segnet")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    Segmenter(model, device="cpu")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert count_batchnorms(model) > 0
    with pytest.raises(SeglabError, match="needs a GPU"):
        prepare_for_inference(model, "cpu", variant="fp16")
    with pytest.raises(SeglabError, match="not one of"):
        prepare_for_inference(model, "cpu", backend="tensorrt")
