"""timm backbones behind seglab's Encoder contract, and `build_encoder`, the one factory.

timm already knows how to dilate its backbones (`output_stride`), return every stage
(`features_only`) and declare what it returns (`feature_info`); this adapter only adds the
DeepLab v3 multi-grid, loading from a local weights file, and seglab's channels/strides names.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
from torch import nn

from seglab.encoders.base import Encoder
from seglab.encoders.download import fetch_pretrained, timm_source, torchvision_state_dict
from seglab.encoders.vgg import VGG16, load_torchvision_vgg16
from seglab.errors import SeglabError

Pretrained = bool | str | os.PathLike
"""False (random init), True (timm/torchvision download) or the path of a local weights file."""

DEEPLAB_VGG_POOL = (3, 2, 1)
"""DeepLab v1's VGG16 pools: 3x3, stride 2, pad 1 (stride 1 once the output stride is reached)."""


class TimmEncoder(Encoder):
    """Any timm model that supports `features_only=True`, as a seglab Encoder.

    Args:
        name: timm model name: resnet50, resnet101, resnet50d/resnet101d (deep stem, as PSPNet),
            xception65 (timm's aligned Xception-65 of DeepLab v3+), mobilenetv2_100, ...
        in_channels: image channels; timm adapts pretrained first-conv weights when not 3.
        output_stride: 8, 16 or 32; timm replaces the last strides by dilation.
        multi_grid: DeepLab v3's per-block rates for the last stage, e.g. (1, 2, 4): block i's
            3x3 convs get dilation stage_dilation * multi_grid[i]. One rate per block; only for
            backbones whose last stage is a sequence of blocks (the ResNets).
        pretrained: False; True loads timm's default weights (downloads on first use); a path
            loads a local `.pth`/`.safetensors` state dict of the full timm model
            (`timm.create_model(name).state_dict()`) through timm's own loader, which drops the
            classifier and adapts the first conv to `in_channels`.
        out_indices: which stages to return (timm's numbering); None returns all of them.
        taps: names of further submodules of the timm model whose outputs are appended to the
            returned maps, in this order (e.g. "blocks.2.0", where torchvision's MobileNetV3
            segmentation models take their auxiliary feature); their channels and strides are
            placed among the stage maps by stride (measured once on a 64x64 input).

    channels / strides come from timm's feature_info; strides are effective, i.e. capped at
    output_stride (a dilated stage keeps the resolution of the one before it).
    """

    def __init__(
        self,
        name: str,
        in_channels: int = 3,
        output_stride: int = 32,
        multi_grid: Sequence[int] | None = None,
        pretrained: Pretrained = False,
        out_indices: Sequence[int] | None = None,
        taps: Sequence[str] = (),
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        options: dict = {"features_only": True, "in_chans": in_channels}
        if output_stride != 32:  # some timm models reject the argument even at its default
            options["output_stride"] = output_stride
        if out_indices is not None:
            options["out_indices"] = tuple(out_indices)
        download = pretrained is True  # not a local file: fetched over the network
        if isinstance(pretrained, str | os.PathLike):
            path = Path(pretrained)
            if not path.is_file():
                raise SeglabError(
                    f"pretrained weights file not found: {path}; give an existing .pth or "
                    ".safetensors file, or pretrained=True to download timm's weights"
                )
            options["pretrained_cfg_overlay"] = {"file": str(path)}
            pretrained = True
        self.name = name
        self.output_stride = output_stride
        if download:
            self.model = fetch_pretrained(
                *timm_source(name), lambda: timm.create_model(name, pretrained=True, **options)
            )
        else:
            self.model = timm.create_model(name, pretrained=bool(pretrained), **options)
        info = self.model.feature_info
        self.channels = list(info.channels())
        self.strides = [min(reduction, output_stride) for reduction in info.reduction()]
        self.multi_grid = tuple(multi_grid) if multi_grid else None
        if self.multi_grid:
            apply_multi_grid(self._module(info.module_name()[-1]), self.multi_grid)
        self.taps = tuple(taps)
        self._order: list[tuple[str, int]] | None = None
        for tap in self.taps:
            self._module(tap).register_forward_hook(_keep_output)
        if self.taps:
            self._declare_taps(in_channels)

    def _declare_taps(self, in_channels: int, size: int = 64) -> None:
        """Place the tapped maps among the stage maps by stride, measured on a 64x64 input.

        A tap goes before the first stage map of the same or a larger stride (a tap inside a
        stage runs before the stage's end), so the list stays ordered fine to coarse.
        """
        was_training = self.training
        self.eval()  # leaves the BN statistics alone
        with torch.no_grad():
            tapped = self(torch.zeros(1, in_channels, size, size))[len(self.channels) :]
        self.train(was_training)
        order = [("stage", i) for i in range(len(self.channels))]
        channels, strides = list(self.channels), list(self.strides)
        for index, tap in enumerate(tapped):
            stride = size // tap.shape[-1]
            at = next((i for i, s in enumerate(strides) if s >= stride), len(strides))
            order.insert(at, ("tap", index))
            channels.insert(at, tap.shape[1])
            strides.insert(at, stride)
        self._order = order
        self.channels, self.strides = channels, strides

    def _module(self, name: str) -> nn.Module:
        """A submodule by timm's feature_info name (FeatureListNet flattens "a.b" to "a_b")."""
        try:
            return self.model.get_submodule(name)
        except AttributeError:
            return self.model.get_submodule(name.replace(".", "_"))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # (B, C_in, H, W) -> [(B, channels[i], ~H / strides[i], ~W / strides[i]), ...]
        maps = self.model(x)
        if not self.taps:
            return maps
        tapped = [self._module(tap).__dict__.pop("tapped_output") for tap in self.taps]
        if self._order is None:  # while _declare_taps measures them
            return [*maps, *tapped]
        return [maps[i] if kind == "stage" else tapped[i] for kind, i in self._order]


def _keep_output(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
    """Forward hook of a tapped module: keep its output for TimmEncoder.forward to collect.

    Stored on the module itself (not in a closure), so copy.deepcopy of an encoder stays
    independent of the original.
    """
    module.__dict__["tapped_output"] = output


def apply_multi_grid(stage: nn.Module, rates: Sequence[int]) -> None:
    """Set block i's 3x3 convs in `stage` to dilation (stage dilation x rates[i]), in place.

    The stage dilation is the largest one already in the stage: timm (like torchvision) gives
    the first block of a dilated stage the previous stage's dilation, the others the new one.
    DeepLab v3 multiplies the unit rate of the stage for every block, the first included.
    """
    blocks = list(stage.children())
    if len(blocks) != len(rates):
        raise ValueError(
            f"multi_grid {tuple(rates)} needs one rate per block; the last stage has "
            f"{len(blocks)} blocks"
        )
    convs = [
        [m for m in block.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
        for block in blocks
    ]
    if not all(convs):
        raise ValueError("multi_grid needs 3x3 convolutions in every block of the last stage")
    stage_dilation = max(conv.dilation[0] for block_convs in convs for conv in block_convs)
    for rate, block_convs in zip(rates, convs, strict=True):
        for conv in block_convs:
            dilation = stage_dilation * rate
            conv.dilation = (dilation, dilation)
            conv.padding = (dilation, dilation)  # keeps the size for k=3 at stride 1 and 2


class SelectedVGG16(VGG16):
    """VGG16 that returns only the stage maps at `out_indices` (all five if None)."""

    def __init__(self, *args, out_indices: Sequence[int] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.out_indices = tuple(range(5) if out_indices is None else out_indices)
        self.channels = [self.channels[i] for i in self.out_indices]
        self.strides = [self.strides[i] for i in self.out_indices]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = super().forward(x)
        return [features[i] for i in self.out_indices]


def build_encoder(
    name: str,
    in_channels: int = 3,
    output_stride: int = 32,
    multi_grid: Sequence[int] | None = None,
    pretrained: Pretrained = False,
    out_indices: Sequence[int] | None = None,
    width: int = 64,
) -> Encoder:
    """The encoder called `name`: "vgg16" is seglab's VGG16, anything else a TimmEncoder.

    For "vgg16" (DeepLab v1's form): pools are 3x3 stride 2 pad 1, those past the output stride
    become stride 1 and, at output stride 8, conv5 is dilated by 2; `width` scales its channels
    (64 in the paper); multi_grid is not supported. pretrained=True loads
    torchvision's ImageNet vgg16; a path loads a torchvision vgg16 state dict file.
    `width` is ignored for timm encoders (their size is in the name).
    """
    if name != "vgg16":
        return TimmEncoder(name, in_channels, output_stride, multi_grid, pretrained, out_indices)
    if multi_grid:
        raise ValueError("vgg16 does not support multi_grid")
    if output_stride not in (8, 16, 32):
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    pools, stride = [], 1
    for _ in range(5):
        pool_stride = 2 if stride < output_stride else 1
        stride *= pool_stride
        pools.append((3, pool_stride, 1))
    encoder = SelectedVGG16(
        in_channels,
        width,
        pools=pools,
        ceil_mode=False,
        conv5_dilation=2 if output_stride == 8 else 1,
        out_indices=out_indices,
    )
    if pretrained:
        load_torchvision_vgg16(encoder, vgg16_state_dict(pretrained))
    return encoder


def vgg16_state_dict(pretrained: Pretrained) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet vgg16 weights (pretrained=True) or those in a local file."""
    if pretrained is True:
        from torchvision.models import VGG16_Weights

        return torchvision_state_dict(VGG16_Weights.IMAGENET1K_V1)
    return load_state_dict_file(pretrained)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from a `.safetensors` file or a `.pth` file (tensors only, no pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise SeglabError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state
