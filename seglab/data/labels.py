"""Label conventions shared by datasets, losses, metrics and reports: defined once, here."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seglab.errors import SeglabError

IGNORE_INDEX = 255
"""Mask value for pixels that count in neither the loss nor the metrics (VOC's 'void')."""

IGNORE_COLOR = (224, 224, 192)
"""Palette colour of IGNORE_INDEX in written masks (the colour VOC uses for void)."""


def check_label_values(mask: np.ndarray, num_classes: int, path: str | Path) -> None:
    """Raise a one-line SeglabError if `mask` has a value outside [0, num_classes), 255 aside."""
    values = np.unique(mask)
    bad = values[(values >= num_classes) & (values != IGNORE_INDEX)]
    if bad.size:
        raise SeglabError(
            f"{path}: label value {int(bad[0])} is outside the {num_classes} classes "
            f"(valid: 0..{num_classes - 1}, or {IGNORE_INDEX} for ignore); "
            "fix the mask or the classes file"
        )


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """The PASCAL VOC colour map, extended to any number of classes (bit-interleaved ids)."""
    palette = []
    for label in range(num_classes):
        r = g = b = 0
        c = label
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.append((r, g, b))
    return palette
