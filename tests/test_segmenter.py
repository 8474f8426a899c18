"""Segmenter: one trained model, every input type, batches, and clear checkpoint errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from seglab.config import InferenceConfig
from seglab.errors import SeglabError
from seglab.inference import Segmenter
from seglab.models import create_model
from seglab.weights import save_weights

UNET = {"width": 4, "depth": 2, "padding": "same", "batch_norm": True}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A 4-class U-Net with non-trivial BN statistics, written with save_weights."""
    torch.manual_seed(0)
    model = create_model("unet", num_classes=4, in_channels=3, **UNET)
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.2, generator=generator)
            module.running_var.uniform_(0.5, 1.5, generator=generator)
    return save_weights(model, tmp_path_factory.mktemp("weights") / "unet.safetensors")


@pytest.fixture(scope="module")
def segmenter(weights):
    return Segmenter.from_checkpoint(weights)


@pytest.fixture(scope="module")
def image():
    """(H, W, 3) uint8 with structure (a bright square on a gradient), 37x53: odd sizes."""
    y, x = np.mgrid[:37, :53]
    image = np.stack([4 * x, 6 * y, 255 - 4 * x], axis=-1).astype(np.uint8)
    image[10:25, 15:40] = (250, 240, 20)
    return image


def test_every_input_type_gives_the_same_labels(segmenter, image, tmp_path):
    path = tmp_path / "image.png"
    Image.fromarray(image).save(path)
    chw = torch.from_numpy(image).permute(2, 0, 1)
    inputs = {
        "path": path,
        "str path": str(path),
        "PIL": Image.fromarray(image),
        "numpy": image,
        "uint8 tensor": chw,
        "float tensor": chw.float() / 255,
    }
    expected = segmenter.predict(image)
    assert expected.shape == (37, 53) and expected.dtype == np.uint8
    assert len(np.unique(expected)) > 1, "a constant map would make the comparison empty"
    for kind, value in inputs.items():
        np.testing.assert_array_equal(segmenter.predict(value), expected, err_msg=kind)


def test_predict_batch_equals_per_image_predict(segmenter, image):
    images = [image, image[::-1].copy(), image[:20, :30].copy(), 255 - image]  # two sizes
    batch = segmenter.predict_batch(images)
    singles = [segmenter.predict(img) for img in images]
    for got, want in zip(batch, singles, strict=True):
        np.testing.assert_array_equal(got, want)
    probs = segmenter.predict_batch(images, probabilities=True)
    for got, img in zip(probs, images, strict=True):
        np.testing.assert_allclose(got, segmenter.predict(img, probabilities=True), atol=1e-5)


def test_probabilities_sum_to_one_and_argmax_is_the_labels(segmenter, image):
    probs = segmenter.predict(image, probabilities=True)
    assert probs.shape == (4, 37, 53) and probs.dtype == np.float32
    assert (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(0), segmenter.predict(image))


def test_flip_and_scales_still_give_probabilities(weights, image):
    cfg = InferenceConfig(scales=[0.75, 1.0], flip=True)
    probs = Segmenter.from_checkpoint(weights, inference=cfg).predict(image, probabilities=True)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)


def rewrite_meta(weights, tmp_path, **changes):
    """Copy the weights beside a YAML that says something else about them."""
    meta = yaml.safe_load(weights.with_suffix(".yaml").read_text())
    meta.update(changes)
    target = tmp_path / "edited.safetensors"
    target.write_bytes(weights.read_bytes())
    target.with_suffix(".yaml").write_text(yaml.safe_dump(meta))
    return target


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"num_classes": 7}, r"classifier\.weight is \(4, 4, 1, 1\) in the file"),
        ({"name": "fcn32s", "options": {"width": 8}}, "does not fit fcn32s with 4 classes"),
        ({"options": {**UNET, "width": 8}}, "does not fit unet with 4 classes"),
        ({"options": {**UNET, "depth": 3}}, "does not fit unet with 4 classes"),
    ],
    ids=["other number of classes", "other model", "other width", "other depth"],
)
def test_checkpoint_that_does_not_fit_its_yaml_is_one_line_error(
    weights, tmp_path, changes, fragment
):
    edited = rewrite_meta(weights, tmp_path, **changes)
    with pytest.raises(SeglabError, match=fragment) as info:
        Segmenter.from_checkpoint(edited)
    message = str(info.value)
    assert "\n" not in message and str(edited) in message
    assert "number of classes it was trained with" in message


def test_missing_or_damaged_checkpoint_files_are_one_line_errors(weights, tmp_path):
    lonely = tmp_path / "lonely.safetensors"
    lonely.write_bytes(weights.read_bytes())
    with pytest.raises(SeglabError, match=r"lonely\.yaml is missing"):
        Segmenter.from_checkpoint(lonely)
    damaged = rewrite_meta(weights, tmp_path)
    damaged.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(SeglabError, match="the file is damaged"):
        Segmenter.from_checkpoint(damaged)
    with pytest.raises(SeglabError, match="weights file not found"):
        Segmenter.from_checkpoint(tmp_path / "nothing.safetensors")


def test_device_choice(weights):
    assert Segmenter.from_checkpoint(weights, device="cpu").device.type == "cpu"
    auto = Segmenter.from_checkpoint(weights, device="auto").device.type
    assert auto == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(SeglabError, match="no CUDA device"):
            Segmenter.from_checkpoint(weights, device="cuda")


def test_crf_option_refines_probabilities_and_rejects_unknown_preset(weights, image):
    crf = pytest.importorskip("seglab.crf")
    with pytest.raises(SeglabError, match="unknown CRF preset 'nope'"):
        Segmenter.from_checkpoint(weights, crf="nope")
    plain = Segmenter.from_checkpoint(weights)
    refined = Segmenter.from_checkpoint(weights, crf="deeplab-largefov")
    probs = refined.predict(image, probabilities=True)
    expected = crf.dense_crf(
        torch.from_numpy(plain.predict(image, probabilities=True))[None],
        torch.from_numpy(image).permute(2, 0, 1)[None],
        preset="deeplab-largefov",
    )[0].numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert probs.flags["C_CONTIGUOUS"]  # dense_crf's output is channels-last
    np.testing.assert_array_equal(refined.predict(image), expected.argmax(0))


def test_segmenter_refuses_a_model_that_does_not_take_rgb_up_front():
    # A 1-channel U-Net used to fail on every image inside predict, one traceback each.
    model = create_model("unet", num_classes=2, in_channels=1, width=4, depth=2)
    with pytest.raises(SeglabError, match="takes 1 input channels"):
        Segmenter(model)


def test_from_checkpoint_takes_a_run_directory_as_every_command_does(weights, tmp_path, image):
    # A run directory means its best.safetensors (seglab.runs.resolve_weights).
    run = tmp_path / "run"
    run.mkdir()
    for suffix in (".safetensors", ".yaml"):
        (run / f"best{suffix}").write_bytes(weights.with_suffix(suffix).read_bytes())
    from_run = Segmenter.from_checkpoint(run).predict(image)
    assert np.array_equal(from_run, Segmenter.from_checkpoint(weights).predict(image))
    with pytest.raises(SeglabError, match="has no best.safetensors"):
        Segmenter.from_checkpoint(tmp_path)
