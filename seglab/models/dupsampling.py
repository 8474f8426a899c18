"""DUpsampling (Tian, He, Shen, Yan, "Decoders Matter for Semantic Segmentation: Data-Dependent
Decoding Enables Flexible Feature Aggregation", CVPR 2019).

No official code exists; the layer follows the paper and the decoder the unofficial port
LinZhuoChen/DUpsampling (shared/MODELS_2019.md, section 3). W is fitted in closed form here:
the paper's least-squares reconstruction of one-hot label patches, min_{W, P} sum ||v - W P v||^2,
is solved by PCA (W = the top C' eigenvectors of sum v v^T, P = W^T), so W has orthonormal
columns; the port fits the same objective by SGD.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seglab.data.labels import IGNORE_INDEX
from seglab.encoders import build_encoder
from seglab.metrics import ConfusionMatrix
from seglab.models.base import SegmentationModel
from seglab.models.registry import register_model
from seglab.nn import ConvBNAct, resize_to


def label_patches(mask: np.ndarray, ratio: int) -> np.ndarray:
    """(H, W) label ids -> (N, ratio * ratio) label patches, row-major in the patch; the mask
    is padded with IGNORE_INDEX to a multiple of `ratio` first."""
    h, w = mask.shape
    mask = np.pad(mask, ((0, -h % ratio), (0, -w % ratio)), constant_values=IGNORE_INDEX)
    rows, cols = mask.shape[0] // ratio, mask.shape[1] // ratio
    patches = mask.reshape(rows, ratio, cols, ratio).transpose(0, 2, 1, 3)
    return patches.reshape(-1, ratio * ratio)


def one_hot_patches(patches: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, r * r) label ids -> (N, K * r * r) float vectors v, index c * r * r + p (the channel
    order of pixel_shuffle); an ignored pixel is all zeros."""
    valid = patches != IGNORE_INDEX
    hot = F.one_hot(torch.where(valid, patches, 0).long(), num_classes).float()
    hot = hot * valid[..., None]  # (N, r * r, K)
    return hot.transpose(1, 2).reshape(len(patches), -1)


def fit_dupsampling_matrix(
    dataset, ratio: int, num_classes: int, features: int, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """W, (K * r * r, C') with orthonormal columns, from the masks of `dataset` (its `load`).

    The second moment M = sum over patches of v v^T is accumulated over distinct patches only
    (most are one class throughout), weighted by their counts; W is M's top C' eigenvectors,
    the least-squares optimum of reconstructing v from C' numbers.
    """
    dim = num_classes * ratio * ratio
    if features > dim:
        raise ValueError(f"features={features} exceeds K * r * r = {dim}: nothing to compress")
    patches = np.concatenate(
        [label_patches(dataset.load(i)[1], ratio) for i in range(len(dataset))]
    )
    unique, counts = np.unique(patches, axis=0, return_counts=True)
    moment = torch.zeros(dim, dim, dtype=torch.float64, device=device)
    for start in range(0, len(unique), 4096):
        v = one_hot_patches(torch.from_numpy(unique[start : start + 4096]).to(device), num_classes)
        weights = torch.from_numpy(counts[start : start + 4096]).to(device, torch.float64)
        moment += (v.double() * weights[:, None]).T @ v.double()
    _, vectors = torch.linalg.eigh(moment)  # ascending eigenvalues
    return vectors[:, -features:].flip(1).float().cpu().contiguous()


def _confusion_of(dataset, ratio: int, num_classes: int, reconstruct) -> ConfusionMatrix:
    confusion = ConfusionMatrix(num_classes, torch.device("cpu"))
    for i in range(len(dataset)):
        mask = torch.from_numpy(dataset.load(i)[1].astype(np.int64))
        h, w = mask.shape
        padded = F.pad(mask, (0, -w % ratio, 0, -h % ratio), value=IGNORE_INDEX)
        valid = padded != IGNORE_INDEX
        hot = F.one_hot(torch.where(valid, padded, 0), num_classes).permute(2, 0, 1).float()
        scores = reconstruct((hot * valid)[None])  # (1, K, H', W')
        confusion.update(scores.argmax(1)[..., :h, :w], mask[None])
    return confusion


def reconstruction_miou(dataset, basis: torch.Tensor, ratio: int, num_classes: int) -> float:
    """mIoU of labels rebuilt from their C' compressed numbers: argmax of W W^T v per patch."""

    def rebuild(hot: torch.Tensor) -> torch.Tensor:
        v = F.pixel_unshuffle(hot, ratio)  # (1, K r r, h, w): the patch vectors
        code = torch.einsum("dc,bdhw->bchw", basis, v)  # x = P v = W^T v
        return F.pixel_shuffle(torch.einsum("dc,bchw->bdhw", basis, code), ratio)

    return _confusion_of(dataset, ratio, num_classes, rebuild).compute()["mean_iou"]


def bilinear_reconstruction_miou(dataset, ratio: int, num_classes: int) -> float:
    """mIoU of one-hot labels averaged down by `ratio` and upsampled bilinearly: the usual
    decoder's best case at the same stride (the paper's baseline)."""

    def rebuild(hot: torch.Tensor) -> torch.Tensor:
        return resize_to(F.avg_pool2d(hot, ratio), hot.shape[-2:])

    return _confusion_of(dataset, ratio, num_classes, rebuild).compute()["mean_iou"]


class DUpsampling(nn.Module):
    """(B, C', h, w) -> (B, K, h * r, w * r): v = W x per position (a 1x1 conv to K * r * r
    with the frozen W), then depth-to-space. W is a buffer, so the weights file stores it and
    no optimizer touches it; `fitted` records whether it came from the labels."""

    def __init__(self, features: int, ratio: int, num_classes: int) -> None:
        super().__init__()
        self.ratio, self.num_classes = ratio, num_classes
        dim = num_classes * ratio * ratio
        # Until fitted: orthonormal random columns, so the untrained network still runs.
        basis = torch.linalg.qr(torch.randn(dim, min(features, dim)))[0]
        self.register_buffer("basis", F.pad(basis, (0, features - basis.shape[1])))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = F.conv2d(x, self.basis[:, :, None, None])  # (B, K r r, h, w)
        return F.pixel_shuffle(v, self.ratio)


@register_model(
    "dupsampling",
    "DUpsampling: ResNet-50 at OS 16, low-level features fused at 1/16, data-dependent "
    "upsampling by a label-fitted W, adaptive-temperature softmax (Tian et al. 2019)",
    {"num_classes": 21},
    # Derived in tests/test_dupsampling.py (the paper gives none): ResNet-50 23,508,032 +
    # low-level 1x1 36,960 + two 3x3 convs 4,829,696 + 590,336 + 1x1 to C' 65,792 + T 1.
    29_030_817,
    {"encoder": "resnet18", "output_stride": 8, "decoder_channels": 32, "features": 16},
)
class DUpsamplingNet(SegmentationModel):
    """DUpsampling network (Tian et al., CVPR 2019): (B, C, H, W) -> (B, num_classes, H, W).

    Encoder at `output_stride` (16: ResNet-50 with a dilated layer4). Decoder: the encoder's
    1/4 and 1/8 maps downsampled (bilinear) to the final map and projected together by a 1x1
    conv to 48 + BN + ReLU, concatenated with the last map, 3x3 conv 256 + BN + ReLU + dropout
    0.5, 3x3 conv 256 + BN + ReLU + dropout 0.1, 1x1 conv to C' = `features`, DUpsampling by
    r = output_stride, divided by the learned temperature T (initially 1): softmax(z / T) is
    the adaptive-temperature softmax the paper needs to converge.

    W must be fitted before training: `fit_from_data(train_set, val_set)` (the trainer calls
    it at a fresh start) fits it on the training masks and reports its reconstruction mIoU.

    upsampling="bilinear" builds the paper's baseline on the same encoder and decoder: the
    1x1 conv goes to num_classes and the logits are upsampled bilinearly by r (no W, no T).

    Where seglab differs: W by PCA instead of SGD; ignored pixels are zero vectors (the port
    maps them to class 0); the input is padded to a multiple of r and the output cropped.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        encoder: str = "resnet50",
        output_stride: int = 16,
        features: int = 256,
        decoder_channels: int = 256,
        low_level_channels: int = 48,
        dropout: Sequence[float] = (0.5, 0.1),
        pretrained: bool | str | os.PathLike = False,
        upsampling: str = "dupsampling",
    ) -> None:
        super().__init__()
        if upsampling not in ("dupsampling", "bilinear"):
            raise ValueError(f"upsampling must be 'dupsampling' or 'bilinear', not {upsampling!r}")
        self.encoder = build_encoder(encoder, in_channels, output_stride, pretrained=pretrained)
        channels, strides = self.encoder.channels, self.encoder.strides
        self.low_level_indices = [strides.index(4), strides.index(8)]
        self.low_level_project = ConvBNAct(
            sum(channels[i] for i in self.low_level_indices), low_level_channels, 1
        )
        self.fuse = nn.Sequential(
            ConvBNAct(channels[-1] + low_level_channels, decoder_channels, 3),
            nn.Dropout(dropout[0]),
            ConvBNAct(decoder_channels, decoder_channels, 3),
            nn.Dropout(dropout[1]),
        )
        self.ratio = output_stride
        if upsampling == "bilinear":
            self.compress = nn.Conv2d(decoder_channels, num_classes, 1)
            self.dupsample = None
            return
        self.compress = nn.Conv2d(decoder_channels, features, 1)
        self.dupsample = DUpsampling(features, output_stride, num_classes)
        self.temperature = nn.Parameter(torch.ones(()))

    def fit_from_data(self, train_set, val_set=None) -> str | None:
        """Fit W on train_set's masks unless it already holds fitted values (loaded weights);
        returns a one-line report with the reconstruction mIoU on val_set, or None."""
        if self.dupsample is None or bool(self.dupsample.fitted):
            return None
        d = self.dupsample
        basis = fit_dupsampling_matrix(train_set, d.ratio, d.num_classes, d.basis.shape[1])
        d.basis.copy_(basis)
        d.fitted.fill_(True)
        report = f"DUpsampling W fitted on {len(train_set)} training masks (r={d.ratio})"
        if val_set is not None:
            miou = reconstruction_miou(val_set, basis, d.ratio, d.num_classes)
            bilinear = bilinear_reconstruction_miou(val_set, d.ratio, d.num_classes)
            report += (
                f": val labels rebuilt at {100 * miou:.2f} mIoU (bilinear at the same stride "
                f"{100 * bilinear:.2f})"
            )
        return report

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        # r x (the last map's size) must cover the input exactly: pad to a multiple of r.
        x = F.pad(x, (0, -w % self.ratio, 0, -h % self.ratio))
        maps = self.encoder(x)
        last = maps[-1]
        low = [resize_to(maps[i], last.shape[-2:]) for i in self.low_level_indices]
        fused = self.fuse(torch.cat([last, self.low_level_project(torch.cat(low, 1))], 1))
        if self.dupsample is None:  # the bilinear baseline
            return resize_to(self.compress(fused), x.shape[-2:])[..., :h, :w]
        logits = self.dupsample(self.compress(fused)) / self.temperature
        return logits[..., :h, :w]
