"""Load torchvision's segmentation checkpoints into seglab's equivalent models.

torchvision ships fcn_resnet50/101, deeplabv3_resnet50/101 and deeplabv3_mobilenet_v3_large
(COCO with VOC labels). seglab builds the same networks as `fcn_resnet` and
`deeplabv3_torchvision` on timm backbones; this module recognises which one a state dict holds,
builds it and renames the weights, so that both produce the same logits.

Every tensor is matched by its name, so the file's key order does not matter (a .safetensors
file stores its keys sorted, a re-saved .pth in any order): timm's ResNets use torchvision's
names under another prefix; timm's MobileNetV3 names follow from torchvision's by the rules of
`_mobilenetv3_key`; the heads are renamed by the tables below. A tensor without a counterpart
or of another shape is a SeglabError naming it.
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

# torchvision prefix -> seglab prefix, for the heads.
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


MOBILENETV3_STAGE_DEPTHS = (1, 2, 3, 4, 2, 3)
"""Blocks per stage of timm's mobilenetv3_large_100, i.e. torchvision's features 1..15 in order."""


def _mobilenetv3_key(name: str, block_layers: Mapping[int, list[int]]) -> str:
    """timm's name of a torchvision mobilenet_v3_large backbone tensor, e.g.
    "5.block.2.fc1.weight" -> "blocks.2.1.se.conv_reduce.weight".

    features.0 is the stem (conv_stem, bn1), features.16 the last 1x1 conv (blocks.6.0);
    features.1..15 are the inverted residuals, whose Conv-BN layers "block.j" are, in order,
    the expansion (if any), the depthwise and the projection conv, and whose squeeze-excite
    (fc1, fc2) is timm's se.conv_reduce and se.conv_expand. `block_layers[i]` lists the j of
    the Conv-BN layers of features.i, taken from the checkpoint's own names.
    """
    index, *rest = name.split(".")
    feature = int(index)
    if feature in (0, 16):
        conv, norm = ("conv_stem", "bn1") if feature == 0 else ("blocks.6.0.conv", "blocks.6.0.bn1")
        return ".".join([conv if rest[0] == "0" else norm, *rest[1:]])
    starts = [sum(MOBILENETV3_STAGE_DEPTHS[:s]) + 1 for s in range(len(MOBILENETV3_STAGE_DEPTHS))]
    stage = max(s for s, start in enumerate(starts) if start <= feature)
    prefix = f"blocks.{stage}.{feature - starts[stage]}"
    layer, sub, *tail = rest[1:]  # rest = ["block", j, sub, ...]
    if sub in ("fc1", "fc2"):
        return ".".join([prefix, "se", {"fc1": "conv_reduce", "fc2": "conv_expand"}[sub], *tail])
    layers = block_layers[feature]
    roles = (
        [("conv_dw", "bn1"), ("conv_pw", "bn2")]  # no expansion: timm's DepthwiseSeparableConv
        if len(layers) == 2
        else [("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")]
    )
    conv, norm = roles[layers.index(int(layer))]
    return ".".join([prefix, conv if sub == "0" else norm, *tail])


def _backbone_keys(state_dict: Mapping[str, torch.Tensor], encoder: str) -> dict[str, str]:
    """torchvision backbone tensor name -> seglab encoder key, from the names alone."""
    names = [k[len("backbone.") :] for k in state_dict if k.startswith("backbone.")]
    if encoder.startswith("resnet"):
        return {f"backbone.{n}": f"encoder.model.{n}" for n in names}
    block_layers: dict[int, set[int]] = {}
    for name in names:
        parts = name.split(".")
        if len(parts) > 3 and parts[1] == "block" and parts[3] not in ("fc1", "fc2"):
            block_layers.setdefault(int(parts[0]), set()).add(int(parts[2]))
    layers = {feature: sorted(js) for feature, js in block_layers.items()}
    return {f"backbone.{n}": f"encoder.model.{_mobilenetv3_key(n, layers)}" for n in names}


def convert_torchvision_state_dict(
    state_dict: Mapping[str, torch.Tensor], model: nn.Module
) -> dict[str, torch.Tensor]:
    """torchvision's weights renamed to `model`'s keys (a seglab fcn_resnet/deeplabv3_torchvision).

    Raises SeglabError naming the first tensor that has no counterpart or another shape.
    """
    target = model.state_dict()
    heads = {**(_ASPP_HEAD if "aspp.conv1x1.conv.weight" in target else _FCN_HEAD), **_AUX_HEAD}
    spec = getattr(model, "seglab_spec", {})
    what = f"seglab's {spec.get('name', type(model).__name__)}"
    encoder = spec.get("options", {}).get("encoder", "resnet")
    try:
        renamed = _backbone_keys(state_dict, encoder)
    except (ValueError, IndexError, KeyError):
        raise SeglabError(
            f"torchvision checkpoint: backbone tensor names are not torchvision's {encoder}"
        ) from None
    converted: dict[str, torch.Tensor] = {}
    for source, value in state_dict.items():
        key = renamed.get(source)
        if key is None:
            prefix = next((p for p in heads if source.startswith(p)), None)
            key = None if prefix is None else heads[prefix] + source[len(prefix) :]
        if key is None or key not in target:
            raise SeglabError(f"torchvision tensor {source} has no counterpart in {what}")
        if value.shape != target[key].shape:
            raise SeglabError(
                f"torchvision tensor {source} has shape {tuple(value.shape)} but {what} needs "
                f"{tuple(target[key].shape)} for {key}: the checkpoint is not the architecture "
                "torchvision builds under that name"
            )
        converted[key] = value
    missing = sorted(set(target) - set(converted))
    if missing:
        raise SeglabError(f"torchvision checkpoint has no tensor for {what}'s {missing[0]}")
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
