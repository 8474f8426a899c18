"""The model contract: what every seglab model promises the engine, inference and export.

Read this first when you add a model. A model is one class in one file under seglab/models,
subclassing `SegmentationModel` and registered with `@register_model` (registry.py); a paper
configuration that differs only in defaults (fcn8s is FCN with stride 8) is a
`register_variant(...)` entry of two lines. The class signature is the one source of truth
for the model's options and their defaults: `seglab models -v` prints it, `create_model`
checks options against it, a weights file records the options given.

    class MyNet(SegmentationModel):
        def __init__(self, num_classes: int, in_channels: int = 3, width: int = 64) -> None:
            super().__init__()
            ...
            self.aux_weights = (0.4,)  # one weight per auxiliary output, in order

Constructor: `num_classes` and `in_channels` come first (the registry passes them; they are
never options in a config: the dataset decides them), then the options, each with the paper's
value as its default. Any `in_channels` >= 1 must work (1 for grayscale, 4 for RGB + alpha).

forward(x), x: (B, in_channels, H, W) normalised images of any H and W:
- eval mode: logits (B, K, H, W) at the input size, always a plain tensor.
- train mode: the same tensor when the model has no auxiliary outputs and `label_stride` is 1;
  otherwise {"out": (B, K, h, w), "aux": [(B, K, h_i, w_i), ...]} with one entry in "aux" per
  weight in `aux_weights` (SegmentationLoss adds CE(out) + sum_i aux_weights[i] * CE(aux[i]),
  resizing each to the labels as it needs). Outputs at another size than the labels are
  compared with nearest-downsampled labels (`label_stride`).
  "se": (B, K) logits of the classes present (EncNet's SE-loss, FastFCN): the loss adds
  `se_weight` * BCE(se, the classes in each image's labels); se_weight is declared (0.2).
- Losses live outside the model.

Declared properties (instance attributes with the defaults below; set them in __init__):
- `aux_weights`: tuple of floats, the paper's weight for each auxiliary output (PSPNet 0.4).
  The contract test runs the model and checks that their number equals the number of "aux"
  outputs, so a wrong length fails in CI, not at a user's first training step.
- `label_stride`: 1, or the stride of the training-mode "out" when the paper computes the loss
  on downsampled labels (DeepLab v1 with downsample_labels: 8). `forward_coarse(x)` returns the
  logits at that stride in every mode.
- `supports_overlap_tile`: True for a model with `forward_tile(x)` (the bare network on one
  tile, output smaller than the input) and `output_size(side)` (its output side for an input
  side, None if not a valid tile): U-Net with valid padding; inference's overlap_tile mode.
- `export_fixed_size`: None when the ONNX graph takes any H and W; otherwise a one-line reason
  why it must be exported at one spatial size (adaptive pooling bins, unpooling by indices).
- `inputs`: the inputs forward takes, ("image",); an RGB-D model lists ("image", "depth").
- `task`: "semantic" (every pixel a class); "instance" models return boxes, masks, labels and
  scores. The task is recorded in the weights file, so weights of one task never load as the
  other.
- `inputs` ("image", "depth"): forward still takes one tensor, (B, C + 1, H, W) with the
  normalised depth as the last channel (seglab/data/depth.py); in_channels counts it.
- `fit_from_data(train_set, val_set)`: optional method for state fitted from the labels before
  training (DUpsampling's W, kept in buffers so weights files store it); the trainer calls it
  after any resume, the model skips it when already fitted, and it returns a report line or None.
- `seglab_spec`: set by create_model: {"name", "num_classes", "in_channels", "options", "task"},
  what a weights file records so the model is rebuilt without the training config.

Submodules carry semantic names (self.aspp, self.decoder.project), never Sequential indices at
the top level, since those become checkpoint keys.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn


class SegmentationModel(nn.Module):
    """Base class of every registered model; see the module docstring for the contract."""

    task: ClassVar[str] = "semantic"
    inputs: ClassVar[tuple[str, ...]] = ("image",)
    aux_weights: tuple[float, ...] = ()
    se_weight: float = 0.0  # weight of the "se" training output, if the model has one
    label_stride: int = 1
    supports_overlap_tile: bool = False
    export_fixed_size: str | None = None
    seglab_spec: dict[str, Any]

    def forward_coarse(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at `label_stride`; a model with label_stride 1 returns forward's logits."""
        out = self(x)
        return out["out"] if isinstance(out, dict) else out


def unwrap(model: nn.Module) -> nn.Module:
    """The seglab model inside DDP (`.module`) or torch.compile (`._orig_mod`) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def main_logits(out: torch.Tensor | dict[str, Any]) -> torch.Tensor:
    """The main logits of a forward's result: the tensor itself, or its "out" entry."""
    return out["out"] if isinstance(out, dict) else out
