"""torchvision's segmentation checkpoints load into seglab and give torchvision's logits."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import segmentation

from seglab.errors import SeglabError
from seglab.models import count_parameters
from seglab.models.torchvision_convert import (
    load_torchvision_checkpoint,
    torchvision_model_spec,
)
from seglab.nn import resize_to

TORCHVISION_MODELS = [
    ("fcn_resnet50", "fcn_resnet", "resnet50"),
    ("fcn_resnet101", "fcn_resnet", "resnet101"),
    ("deeplabv3_resnet50", "deeplabv3_torchvision", "resnet50"),
    ("deeplabv3_resnet101", "deeplabv3_torchvision", "resnet101"),
    ("deeplabv3_mobilenet_v3_large", "deeplabv3_torchvision", "mobilenetv3_large_100"),
]


def _torchvision_model(name: str, num_classes: int = 5, aux: bool = True) -> torch.nn.Module:
    torch.manual_seed(0)
    model = getattr(segmentation, name)(
        weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=aux
    )
    with torch.no_grad():  # fresh BN statistics are 0/1: make them matter
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize(("name", "seglab_name", "encoder"), TORCHVISION_MODELS)
def test_torchvision_checkpoint_gives_torchvision_logits(tmp_path, name, seglab_name, encoder):
    reference = _torchvision_model(name)
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)

    model = load_torchvision_checkpoint(path)

    assert model.seglab_spec["name"] == seglab_name
    assert model.seglab_spec["options"] == {"encoder": encoder, "aux": True}
    assert count_parameters(model) == count_parameters(reference)
    x = torch.randn(2, 3, 67, 83)  # odd sizes exercise the resizing too
    with torch.no_grad():
        expected = reference(x)
        out = model(x)
        features = model.encoder(x)
        aux = resize_to(model.aux_head(features[model.aux_feature]), x.shape[-2:])
    assert out.shape == (2, 5, 67, 83)
    assert (out - expected["out"]).abs().max() < 1e-4
    assert (aux - expected["aux"]).abs().max() < 1e-4


def test_checkpoint_without_aux_builds_model_without_aux_head():
    reference = _torchvision_model("deeplabv3_resnet50", num_classes=3, aux=False)
    name, options = torchvision_model_spec(reference.state_dict())
    assert (name, options) == (
        "deeplabv3_torchvision",
        {"num_classes": 3, "encoder": "resnet50", "aux": False},
    )
    model = load_torchvision_checkpoint(reference.state_dict())
    assert model.aux_head is None
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (model(x) - reference(x)["out"]).abs().max() < 1e-4


def test_other_checkpoints_are_refused_with_a_clear_error():
    from torchvision.models import resnet18

    with pytest.raises(SeglabError, match="not a torchvision segmentation checkpoint"):
        load_torchvision_checkpoint(resnet18(weights=None).state_dict())


def test_convert_command_writes_seglab_weights_that_segmenter_loads(tmp_path, capsys):
    from seglab.cli import main
    from seglab.inference import Segmenter

    reference = _torchvision_model("fcn_resnet50", num_classes=3)
    torch.save(reference.state_dict(), tmp_path / "fcn.pth")
    out = tmp_path / "fcn.safetensors"
    assert main(["convert", str(tmp_path / "fcn.pth"), "--out", str(out)]) == 0
    assert "fcn_resnet" in capsys.readouterr().out
    segmenter = Segmenter.from_checkpoint(out)
    image = torch.rand(3, 40, 56)
    probs = segmenter.predict(image, probabilities=True)
    with torch.no_grad():
        from seglab.data.transforms import normalize_image

        expected = reference(normalize_image((image * 255).round().to(torch.uint8))[None])
    assert abs(probs - expected["out"].softmax(1)[0].numpy()).max() < 1e-4
    assert main(["convert", str(tmp_path / "missing.pth"), "--out", str(out)]) == 2


@pytest.mark.parametrize("name", ["deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large"])
def test_safetensors_and_a_shuffled_pth_convert_by_name_to_the_same_logits(tmp_path, name):
    import random

    from safetensors.torch import save_file

    reference = _torchvision_model(name)
    state = reference.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "tv.safetensors"))
    keys = list(state)
    random.Random(0).shuffle(keys)  # a position-matching converter would pair wrong tensors
    torch.save({k: state[k] for k in keys}, tmp_path / "shuffled.pth")

    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        expected = reference(x)["out"]
        logits = [
            load_torchvision_checkpoint(tmp_path / file)(x)
            for file in ("tv.safetensors", "shuffled.pth")
        ]
    assert (logits[0] - expected).abs().max() < 1e-4
    assert torch.equal(logits[0], logits[1])


def test_a_tensor_of_the_wrong_shape_is_named_with_the_cause():
    state = _torchvision_model("fcn_resnet50", num_classes=3).state_dict()
    state["backbone.layer2.0.conv1.weight"] = torch.zeros(64, 256, 1, 1)  # torchvision: 128
    with pytest.raises(SeglabError) as error:
        load_torchvision_checkpoint(state)
    message = str(error.value)
    assert "\n" not in message
    assert "backbone.layer2.0.conv1.weight has shape (64, 256, 1, 1)" in message
    assert "(128, 256, 1, 1)" in message and "not the architecture" in message


def test_a_tensor_torchvision_does_not_have_is_named():
    state = _torchvision_model("fcn_resnet50", num_classes=3, aux=False).state_dict()
    state["backbone.layer5.0.conv1.weight"] = torch.zeros(1)
    with pytest.raises(SeglabError, match=r"backbone\.layer5\.0\.conv1\.weight has no counterpart"):
        load_torchvision_checkpoint(state)
