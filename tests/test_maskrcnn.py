"""The instance contract (seglab/models/base.py, task "instance") on Mask R-CNN: loss dict in
training, per-image detections in evaluation, torchvision checkpoints, the weights' task."""

from __future__ import annotations

import pytest
import torch

from seglab.errors import SeglabError
from seglab.models import MODELS, create_model
from seglab.weights import load_weights, save_weights

INSTANCE_MODELS = sorted(n for n in MODELS if MODELS[n].cls.task == "instance")
LOSS_TERMS = {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}


def _target(h: int, w: int, boxes: list[tuple[int, int, int, int]], labels: list[int]) -> dict:
    """Rectangular objects: each mask is exactly its box, so boxes and masks agree."""
    masks = torch.zeros(len(boxes), h, w, dtype=torch.uint8)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        masks[i, y1:y2, x1:x2] = 1
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "masks": masks,
    }


@pytest.mark.parametrize("name", INSTANCE_MODELS)
def test_train_mode_returns_the_loss_dict_and_backward_reaches_the_heads(name):
    torch.manual_seed(0)
    model = create_model(name, 3, **MODELS[name].small_options).train()
    assert model.task == "instance" and model.seglab_spec["task"] == "instance"
    images = torch.rand(2, 3, 48, 56)
    targets = [_target(48, 56, [(4, 6, 30, 40)], [1]), _target(48, 56, [(10, 2, 50, 20)], [2])]
    losses = model(images, targets)
    assert set(losses) == LOSS_TERMS
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for module in (model.backbone.body.conv1, model.roi_heads.mask_predictor, model.rpn.head):
        assert all(p.grad is not None for p in module.parameters())
    with pytest.raises(SeglabError, match="needs targets"):
        model(images)


@pytest.mark.parametrize("name", INSTANCE_MODELS)
@pytest.mark.parametrize("in_channels", [3, 1])
def test_eval_mode_returns_boxes_labels_scores_masks_per_image(name, in_channels):
    torch.manual_seed(0)
    model = create_model(name, 4, in_channels, **MODELS[name].small_options).eval()
    with torch.no_grad():
        results = model([torch.rand(in_channels, 40, 52), torch.rand(in_channels, 33, 47)])
    assert len(results) == 2
    for result, (h, w) in zip(results, [(40, 52), (33, 47)], strict=True):
        n = len(result["scores"])
        assert result["boxes"].shape == (n, 4) and result["labels"].shape == (n,)
        assert result["masks"].shape == (n, 1, h, w)  # back at the input size
        if n:
            assert result["labels"].min() >= 1 and result["labels"].max() < 4  # 0: background
            assert result["boxes"][:, 2].max() <= w and result["boxes"][:, 3].max() <= h


def test_torchvision_state_dict_loads_with_identical_outputs():
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(0)
    size = {"min_size": 64, "max_size": 64}
    reference = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3, **size)
    reference.eval()
    model = create_model("maskrcnn", 3, **size).eval()
    model.load_state_dict(reference.state_dict())  # strict: the same keys
    torch.manual_seed(1)
    images = [torch.rand(3, 64, 80)]
    with torch.no_grad():
        expected, got = reference(images)[0], model(images)[0]
    assert len(expected["scores"]) > 0  # random weights still detect something to compare
    for key in ("boxes", "labels", "scores", "masks"):
        assert torch.equal(expected[key], got[key]), key


def test_v2_has_torchvisions_v2_keys():
    from torchvision.models.detection import maskrcnn_resnet50_fpn_v2

    with torch.device("meta"):
        reference = maskrcnn_resnet50_fpn_v2(weights=None, weights_backbone=None, num_classes=5)
        model = create_model("maskrcnn_v2", 5)
    ours, theirs = model.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_semantic_and_instance_weights_cannot_be_confused(tmp_path):
    instance = create_model("maskrcnn", 3, **MODELS["maskrcnn"].small_options)
    semantic = create_model("unet", 3, 3, width=4)
    save_weights(instance, tmp_path / "instance.safetensors")
    save_weights(semantic, tmp_path / "semantic.safetensors")
    with pytest.raises(SeglabError) as error:
        load_weights(tmp_path / "instance.safetensors")  # a semantic caller (the default)
    message = str(error.value)
    assert "\n" not in message and "instance.safetensors" in message
    assert "task 'instance'" in message and "needs task 'semantic'" in message
    with pytest.raises(SeglabError) as error:
        load_weights(tmp_path / "semantic.safetensors", task="instance")
    message = str(error.value)
    assert (
        "\n" not in message and "task 'semantic'" in message and "needs task 'instance'" in message
    )
    model, meta = load_weights(tmp_path / "instance.safetensors", task="instance")
    assert meta["task"] == "instance" and meta["options"] == MODELS["maskrcnn"].small_options
    for key, value in instance.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)


def test_bad_options_are_one_line_errors():
    with pytest.raises(SeglabError, match="backbone 'vgg16' is not one of"):
        create_model("maskrcnn", 3, backbone="vgg16")
    with pytest.raises(SeglabError, match="version 'v3'"):
        create_model("maskrcnn", 3, version="v3")
    with pytest.raises(SeglabError, match="coco weights exist for backbone resnet50 with 91"):
        create_model("maskrcnn", 3, pretrained="coco")
    with pytest.raises(SeglabError, match="counts the background"):
        create_model("maskrcnn", 1)
