"""Load torchvision's segmentation checkpoints into seglab's equivalent models.

torchvision ships fcn_resnet50/101, deeplabv3_resnet50/101 and deeplabv3_mobilenet_v3_large
(COCO with VOC labels). seglab builds the same networks as `fcn_resnet` and
`deeplabv3_torchvision` on timm backbones; this module recognises which one a state dict holds,
builds it and renames the weights, so that both produce the same logits.

Backbone weights are matched by position: timm's ResNets and MobileNetV3 hold the same tensors
as torchvision's, in the same order, under other names; every pair is checked by shape. Head
weights are renamed by the table below.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from seglab.encoders import load_state_dict_file
from seglab.errors import SeglabError
from seglab.models.registry import create_model

# torchvision prefix -> seglab prefix, for the heads (the backbone is matched by position).
_ASPP_HEAD = {
    "classifier.0.convs.0.0.": "aspp.conv1x1.conv.",
    "classifier.0.convs.0.1.": "aspp.conv1x1.bn.",
    "classifier.0.convs.1.0.": "aspp.atrous.0.conv.",
    "classifier.0.convs.1.1.": "aspp.atrous.0.bn.",
    "classifier.0.convs.2.0.": "aspp.atrous.1.conv.",
    "classifier.0.convs.2.1.": "aspp.atrous.1.bn.",
    "classifier.0.convs.3.0.": "aspp.atrous.2.conv.",
    "classifier.0.convs.3.1.": "aspp.atrous.2.bn.",
    "classifier.0.convs.4.1.": "aspp.pooling.conv.conv.",
    "classifier.0.convs.4.2.": "aspp.pooling.conv.bn.",
    "classifier.0.project.0.": "aspp.project.conv.",
    "classifier.0.project.1.": "aspp.project.bn.",
    "classifier.1.": "head.conv.",
    "classifier.2.": "head.bn.",
    "classifier.4.": "classifier.",
}
_FCN_HEAD = {
    "classifier.0.": "head.conv.conv.",
    "classifier.1.": "head.conv.bn.",
    "classifier.4.": "head.classifier.",
}
_AUX_HEAD = {
    "aux_classifier.0.": "aux_head.conv.conv.",
    "aux_classifier.1.": "aux_head.conv.bn.",
    "aux_classifier.4.": "aux_head.classifier.",
}
_RESNET_DEPTH = {6: "resnet50", 23: "resnet101"}  # blocks in layer3


def torchvision_model_spec(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, Any]]:
    """The seglab model name and create_model options equivalent to a torchvision state dict.

    E.g. a deeplabv3_resnet101 state dict with aux_classifier gives
    ("deeplabv3_torchvision", {"num_classes": 21, "encoder": "resnet101", "aux": True}).
    Raises SeglabError if the state dict is none of torchvision's segmentation models.
    """
    keys = set(state_dict)
    if "backbone.layer3.0.conv1.weight" in keys:
        blocks = len({k.split(".")[2] for k in keys if k.startswith("backbone.layer3.")})
        if blocks not in _RESNET_DEPTH:
            raise SeglabError(f"unsupported torchvision ResNet with {blocks} blocks in layer3")
        encoder = _RESNET_DEPTH[blocks]
    elif "backbone.16.0.weight" in keys and state_dict["backbone.16.0.weight"].shape[0] == 960:
        encoder = "mobilenetv3_large_100"
    else:
        raise SeglabError(
            "not a torchvision segmentation checkpoint (fcn_resnet50/101, deeplabv3_resnet50/101, "
            "deeplabv3_mobilenet_v3_large): no backbone.layer3 or backbone.16 weights"
        )
    if "classifier.0.convs.0.0.weight" in keys:
        name, classifier = "deeplabv3_torchvision", "classifier.4.weight"
    elif "classifier.0.weight" in keys and encoder.startswith("resnet"):
        name, classifier = "fcn_resnet", "classifier.4.weight"
    else:
        raise SeglabError("torchvision checkpoint has neither a DeepLabHead nor an FCNHead")
    options = {
        "num_classes": int(state_dict[classifier].shape[0]),
        "encoder": encoder,
        "aux": any(k.startswith("aux_classifier.") for k in keys),
    }
    return name, options


def convert_torchvision_state_dict(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """torchvision's weights renamed to `model`'s keys (a seglab fcn_resnet/deeplabv3_torchvision).

    Raises SeglabError naming the first tensor that has no counterpart or another shape.
    """
    target = model.state_dict()
    heads = {**(_ASPP_HEAD if "aspp.conv1x1.conv.weight" in target else _FCN_HEAD), **_AUX_HEAD}
    converted: dict[str, torch.Tensor] = {}
    backbone = [(k, v) for k, v in state_dict.items() if k.startswith("backbone.")]
    encoder_keys = [k for k in target if k.startswith("encoder.")]
    if len(backbone) != len(encoder_keys):
        raise SeglabError(
            f"torchvision backbone has {len(backbone)} tensors, seglab's encoder "
            f"{len(encoder_keys)}: not the same architecture"
        )
    for (source, value), key in zip(backbone, encoder_keys, strict=True):
        if value.shape != target[key].shape:
            raise SeglabError(
                f"{source} {tuple(value.shape)} does not match {key} {tuple(target[key].shape)}"
            )
        converted[key] = value
    for source, value in state_dict.items():
        if source.startswith("backbone."):
            continue
        prefix = next((p for p in heads if source.startswith(p)), None)
        if prefix is None:
            raise SeglabError(f"no seglab counterpart for torchvision weight {source}")
        key = heads[prefix] + source[len(prefix) :]
        if key not in target or target[key].shape != value.shape:
            raise SeglabError(f"torchvision weight {source} does not fit seglab's {key}")
        converted[key] = value
    missing = sorted(set(target) - set(converted))
    if missing:
        raise SeglabError(f"torchvision checkpoint has no weights for {missing[0]}")
    return converted


def load_torchvision_checkpoint(
    source: str | os.PathLike | Mapping[str, torch.Tensor],
) -> nn.Module:
    """A seglab model holding the weights of a torchvision segmentation checkpoint.

    `source` is a state dict or the path of a `.pth`/`.safetensors` file with one, e.g.
    torchvision's deeplabv3_resnet101_coco-586e9e4e.pth. The model is built with create_model
    (so it carries `seglab_spec`), in eval mode, and gives torchvision's logits.
    """
    state_dict = source if isinstance(source, Mapping) else load_state_dict_file(source)
    name, options = torchvision_model_spec(state_dict)
    model = create_model(name, **options)
    model.load_state_dict(convert_torchvision_state_dict(state_dict, model))
    return model.eval()
