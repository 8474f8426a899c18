"""Training from scribbles, points or boxes through the normal trainer, and which pixels of a
training crop are real (the validity mask of the Gated CRF loss and of distillation).

    data:
      weak: boxes        # scribbles | points | boxes: the train split's labels (folder layout)
      box_inner: 0.2     # boxes only: the central fraction of each box's area given its class
    loss:
      gated_crf: {}      # optional: + the Gated CRF loss (seglab/losses_weak.py)

With `data.weak` the train split reads ROOT/scribbles/, points/ or boxes/ (formats in
seglab/data/weak_labels.py) instead of masks/, as a sparse mask: the annotated pixels carry
their class, every other pixel is 255, so the usual cross-entropy (ignore 255) is the partial
cross-entropy of the Gated CRF paper. The val split keeps its dense masks: mIoU is measured
against full labels. Every weak file is checked before training like a mask (one line naming
the file); an image without one is an error, not an empty label.

Boxes follow Box^i of Khoreva et al., "Simple Does It" (CVPR 2017): the Gated CRF paper has no
box experiment ([GC]: "Box supervision: not found"), and Box^i is the conversion that trains a
network once, without GrabCut or recursive relabelling. A pixel outside every box is
background (a box is drawn around every object); the central `box_inner` of a box's area (the
box scaled about its centre by sqrt(box_inner), at least its centre pixel) is the box's class;
the rest of the box is 255 (unlabelled: the object's edge lies somewhere in it). A core pixel
that a box of another class also covers is 255 (which object is in front is unknown).
box_inner 1 fills whole boxes (the naive "Box" baseline), 0 labels background only. Boxes
assume compact objects: a ring's core is its hole, labelled ring.

Padding: a training crop larger than its image (and a rotation) adds pixels that are not in
the image; the mask marks them 255 like unlabelled ones. When the loss needs to tell the two
apart (loss.gated_crf, distill), the trainer wraps the train transform in MarkPadding: the
image's own 255 goes through as 256 and comes back as 255, the transform's fill as PADDED;
split_padding turns a batch into (labels with 255, valid) for the losses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from seglab.data.folder import FolderDataset, read_image
from seglab.data.labels import IGNORE_INDEX
from seglab.data.weak_labels import (
    BACKGROUND,
    points_mask,
    read_boxes,
    read_points,
    read_scribbles,
    weak_label_path,
)
from seglab.errors import SeglabError

TRAINABLE_KINDS = ("scribbles", "points", "boxes")
PADDED = 256  # mask value of pixels the transform invented (beyond any stored uint8 label)
_OWN_IGNORE = 257  # the image's own 255 while the transform runs


def _core_range(start: int, stop: int, scale: float) -> tuple[int, int]:
    """Pixels [lo, hi) of [start, stop) whose centres lie within scale * length of the
    centre, at least the centre pixel."""
    centre, half = (start + stop) / 2, scale * (stop - start) / 2
    lo, hi = math.ceil(centre - half - 0.5), math.floor(centre + half - 0.5) + 1
    middle = (start + stop - 1) // 2
    return max(start, min(lo, middle)), min(stop, max(hi, middle + 1))


def boxes_mask(
    boxes: Sequence[tuple[int, int, int, int, int]], size: tuple[int, int], inner: float = 0.2
) -> np.ndarray:
    """(H, W) uint8 Box^i labels of [(x0, y0, x1, y1, class)] boxes (x1, y1 exclusive)."""
    if not 0 <= inner <= 1:
        raise SeglabError(f"data.box_inner {inner} must lie in [0, 1] (0.2: Box^i)")
    mask = np.full(size, BACKGROUND, np.uint8)
    covered = {}  # class -> pixels inside any of its boxes
    for x0, y0, x1, y1, label in boxes:
        covered.setdefault(label, np.zeros(size, bool))[y0:y1, x0:x1] = True
        mask[y0:y1, x0:x1] = IGNORE_INDEX
    if inner == 0:
        return mask
    scale = math.sqrt(inner)  # per side, so the core covers `inner` of the area
    for x0, y0, x1, y1, label in boxes:
        (cx0, cx1), (cy0, cy1) = _core_range(x0, x1, scale), _core_range(y0, y1, scale)
        core = np.zeros(size, bool)
        core[cy0:cy1, cx0:cx1] = True
        for other, pixels in covered.items():
            if other != label:
                core &= ~pixels
        mask[core] = label
    return mask


class WeakLabelDataset(FolderDataset):
    """A folder split whose masks are its scribbles, points or boxes as sparse labels."""

    # Not a data.format of its own: the folder format's train split read through data.weak.
    registry_exempt = "the folder format's train split with sparse labels (data.weak)"

    def __init__(self, root, split, transform=None, cache=False, layout=None,
                 kind: str = "scribbles", box_inner: float = 0.2) -> None:  # fmt: skip
        if kind not in TRAINABLE_KINDS:
            hint = "; image tags train through `seglab weak`" if kind == "tags" else ""
            raise SeglabError(f"data.weak {kind!r}: use one of {', '.join(TRAINABLE_KINDS)}{hint}")
        if not 0 <= box_inner <= 1:
            raise SeglabError(f"data.box_inner {box_inner} must lie in [0, 1] (0.2: Box^i)")
        super().__init__(root, split, transform, cache, layout)
        self.kind, self.box_inner = kind, box_inner

    def mask_path(self, index: int) -> Path:
        return weak_label_path(self.root, self.kind, self.names[index])

    def weak_mask(self, index: int, size: tuple[int, int]) -> np.ndarray:
        """(H, W) uint8 sparse labels of sample `index` (255 unlabelled), checked."""
        path, names = self.mask_path(index), self.classes.names
        if not path.is_file():
            raise SeglabError(
                f"{path}: missing; data.weak={self.kind} needs one per training image "
                "(`seglab data shapes --weak` writes them), or remove data.weak"
            )
        if self.kind == "scribbles":
            return read_scribbles(path, len(names), size)
        if self.kind == "points":
            return points_mask(read_points(path, names, size), size)
        return boxes_mask(read_boxes(path, names, size), size, self.box_inner)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 image and (H, W) uint8 sparse labels."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        image = read_image(self.image_path(index))
        sample = (image, self.weak_mask(index, image.shape[:2]))
        if self._cache is not None:
            self._cache[index] = sample
        return sample

    def check(self, index: int) -> np.ndarray:
        """The readers check sizes, classes and coordinates; returns the label ids present
        (not 255: unlabelled pixels are the rule here, not a sign of 0/255 binary masks)."""
        values = np.unique(self.load(index)[1])
        return values[values != IGNORE_INDEX]


def weak_train_set(d, augment, layout) -> WeakLabelDataset:
    """The train split of data config `d` read from its weak labels (d.weak)."""
    if d.format != "folder":
        raise SeglabError(
            f"data.weak needs data.format folder (weak labels live beside its masks/), not "
            f"{d.format!r}; convert the data to the folder layout"
        )
    return WeakLabelDataset(d.root, d.train_split, augment, d.cache, layout, d.weak, d.box_inner)


class MarkPadding:
    """A train transform whose invented pixels (crop padding, rotation fill) come out PADDED
    while the image's own 255 stays 255; (H, W) int64 masks in and out."""

    def __init__(self, transform) -> None:
        self.transform = transform

    def __call__(self, image, mask: torch.Tensor, *extra):
        mask = mask.masked_fill(mask == IGNORE_INDEX, _OWN_IGNORE)
        image, mask, *rest = self.transform(image, mask, *extra)
        invented = mask == IGNORE_INDEX  # the transform fills masks with 255
        mask = mask.masked_fill(mask == _OWN_IGNORE, IGNORE_INDEX).masked_fill(invented, PADDED)
        return (image, mask, *rest)


def split_padding(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, W) masks of MarkPadding -> (labels with 255 where padded, bool valid)."""
    valid = masks != PADDED
    return masks.masked_fill(~valid, IGNORE_INDEX), valid
