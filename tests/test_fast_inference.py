"""The fast inference variants (seglab/fast_inference.py) give eager's labels and probabilities.

The reference is computed here independently: softmax of the unchanged model's logits on the
normalised image, with nothing from seglab.inference in between. BN statistics are randomised
first, so folding a BN into its conv changes the weights for real (a fresh BN is an identity
that folding could not get wrong).
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from seglab import create_model
from seglab.config import InferenceConfig
from seglab.data.transforms import normalize_image
from seglab.errors import SeglabError
from seglab.fast_inference import CHANNELS_LAST_CPU, prepare_for_inference
from seglab.inference import Segmenter
from seglab.models.base import main_logits
from seglab.models.registry import MODELS
from seglab.nn.fold_batchnorm import count_batchnorms
from seglab.weights import save_weights

# (name, BatchNorm layers in the small model): three with BN, one without;
# deeplabv3_torchvision is in CHANNELS_LAST_CPU, so "auto" runs it channels_last on the CPU
CASES = [("segnet", True), ("deeplabv3", True), ("deeplabv3_torchvision", True), ("fcn8s", False)]


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
        layout = name in CHANNELS_LAST_CPU
        assert segmenter.runner.channels_last == layout
        assert f"channels_last {'on' if layout else 'off'}" in segmenter.variant
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


class _FlattensOnSomeHeights(torch.nn.Module):
    """conv -> (on heights divisible by 3: a .view that channels_last memory cannot give) ->
    conv. The 1x1 flatten-and-back is an identity, so eager's output is easy to state."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4).eval()
        self.last = torch.nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.first(x))
        b, c, h, w = x.shape
        if h % 3 == 0:
            x = x.view(b, c * h, w).view(b, c, h, w)  # merging C with H needs NCHW memory
        return self.last(x)


def test_a_size_that_fails_in_channels_last_falls_back_to_contiguous_with_a_notice(capsys):
    model = _FlattensOnSomeHeights()
    runner, description = prepare_for_inference(model, "cpu", channels_last=True)
    assert "channels_last on" in description  # the 64x64 example has no view: the check passes
    x = torch.randn(1, 3, 48, 20)  # 48 % 3 == 0: the view runs
    with torch.no_grad():
        expected = model(x)
    with torch.inference_mode():
        got = runner(x)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert "channels_last failed at (1, 3, 48, 20)" in capsys.readouterr().err
    assert not runner.channels_last  # later inputs run contiguous from the start
    with torch.inference_mode():
        torch.testing.assert_close(runner(x), expected, atol=1e-4, rtol=0)
    assert capsys.readouterr().err == ""  # the notice is said once


def test_a_model_failing_the_layout_check_runs_contiguous_and_says_why(capsys, monkeypatch):
    monkeypatch.setattr("seglab.fast_inference._FOLD_SIZES", (63,))  # 63 % 3 == 0: the view
    model = _FlattensOnSomeHeights()
    runner, description = prepare_for_inference(model, "cpu", channels_last=True)
    assert "channels_last off (cpu; " in description
    assert "channels_last off:" in capsys.readouterr().err
    assert not runner.channels_last
    x = torch.randn(1, 3, 30, 17)
    with torch.no_grad(), torch.inference_mode():
        torch.testing.assert_close(runner(x), model(x), atol=1e-4, rtol=0)


def _alive(kind: type) -> int:
    gc.collect()
    return sum(type(obj) is kind for obj in gc.get_objects())


def test_segmenter_keeps_one_copy_of_the_model_and_options_share_it(tmp_path):
    model = _model("segnet")
    path = save_weights(model, tmp_path / "segnet.safetensors")
    image = _images()[0]
    expected = _eager_probabilities(model, image)
    # flip: the mean of the image's and the mirrored image's probabilities (mirrored back)
    mirrored = _eager_probabilities(model, np.ascontiguousarray(image[:, ::-1]))[:, :, ::-1]
    kind = type(model)
    before = _alive(kind)
    segmenter = Segmenter.from_checkpoint(path)
    assert _alive(kind) == before + 1  # the folded model only, not the loaded one beside it
    assert count_batchnorms(segmenter.model) == 0
    flipped = segmenter.with_options(InferenceConfig(flip=True), None)
    assert flipped.runner is segmenter.runner and _alive(kind) == before + 1
    np.testing.assert_allclose(segmenter.predict(image, True), expected, atol=1e-4, rtol=0)
    both = (expected + mirrored) / 2
    np.testing.assert_allclose(flipped.predict(image, True), both, atol=1e-4, rtol=0)
