"""Cross-entropy composition and SegNet's median-frequency weights, checked by hand."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seglab.losses import SegmentationLoss, class_pixel_counts, median_frequency_weights


def test_median_frequency_weights_by_hand():
    masks = [
        np.array([[0, 0], [0, 1]]),  # 4 px: class 0 x3, class 1 x1
        np.array([[0, 2], [2, 255]]),  # 3 valid px: class 0 x1, class 2 x2
    ]
    pixels, image_pixels = class_pixel_counts(masks, 3)
    assert pixels.tolist() == [4, 1, 2]
    assert image_pixels.tolist() == [7, 4, 3]
    freq = np.array([4 / 7, 1 / 4, 2 / 3])
    expected = np.median(freq) / freq
    assert median_frequency_weights(pixels, image_pixels) == pytest.approx(expected)


def test_aux_outputs_add_with_their_weights():
    torch.manual_seed(0)
    out, aux = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    target[0, 0, 0] = 255
    loss = SegmentationLoss(aux_weights=[0.4])({"out": out, "aux": [aux]}, target)
    expected = F.cross_entropy(out, target, ignore_index=255) + 0.4 * F.cross_entropy(
        aux, target, ignore_index=255
    )
    assert loss.item() == pytest.approx(expected.item())


def test_low_resolution_logits_use_a_nearest_downsampled_target():
    logits = torch.randn(1, 2, 2, 2)
    target = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]]])
    loss = SegmentationLoss()(logits, target)
    expected = F.cross_entropy(logits, torch.tensor([[[0, 1], [1, 0]]]))
    assert loss.item() == pytest.approx(expected.item())


def test_pixel_weights_scale_each_pixels_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4, 4)
    target = torch.randint(0, 3, (1, 4, 4))
    target[0, 0, 0] = 255
    weights = torch.rand(1, 4, 4) + 0.5
    per_pixel = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    valid = target != 255
    expected = (per_pixel * weights)[valid].sum() / valid.sum()
    loss = SegmentationLoss()(logits, target, weights)
    assert loss.item() == pytest.approx(expected.item())
    plain = SegmentationLoss()(logits, target, torch.ones(1, 4, 4))
    assert plain.item() == pytest.approx(F.cross_entropy(logits, target, ignore_index=255).item())


def test_training_with_unet_border_weights(tiny_config, tmp_path):
    from seglab.engine.trainer import train
    from seglab.errors import SeglabError

    train(tiny_config("loss.border_weights={w0: 10, sigma: 5}", "train.iters=2"), progress=False)
    assert (tmp_path / "run" / "final.safetensors").is_file()
    with pytest.raises(SeglabError, match="takes w0 and sigma"):
        train(
            tiny_config("loss.border_weights={w: 1}", f"run_dir={tmp_path / 'x'}"), progress=False
        )
