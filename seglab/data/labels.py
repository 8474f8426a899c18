"""Label conventions shared by datasets, losses, metrics and reports: defined once, here."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seglab.errors import SeglabError

IGNORE_INDEX = 255
"""Mask value for pixels that count in neither the loss nor the metrics (VOC's 'void')."""

IGNORE_COLOR = (224, 224, 192)
"""Palette colour of IGNORE_INDEX in written masks (the colour VOC uses for void)."""


def check_label_values(mask: np.ndarray, num_classes: int, path: str | Path) -> np.ndarray:
    """The mask's distinct values; a one-line SeglabError if one is outside [0, num_classes),
    255 aside (reported as stored: the caller reads masks at their true bit depth)."""
    values = np.unique(mask)
    bad = values[((values >= num_classes) | (values < 0)) & (values != IGNORE_INDEX)]
    if bad.size:
        raise SeglabError(
            f"{path}: label value {int(bad[0])} is outside the {num_classes} classes "
            f"(valid: 0..{num_classes - 1}, or {IGNORE_INDEX} for ignore); "
            "fix the mask or the classes file"
        )
    return values


def read_label_map(path: Path, class_names: list[str]) -> dict[int, int]:
    """`STORED NEW` per line (NEW an id or a class name; `#` starts a comment) -> {stored: id}.

    The dataset-side setting for masks whose stored values are not the ids, e.g. `255 1` for
    binary masks saved as 0/255; every command (check, stats, train, eval) reads it with the
    data. A missing file is no mapping.
    """
    if not path.is_file():
        return {}
    mapping = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split("#", 1)[0].split(None, 1)
        if not fields:
            continue
        target = fields[1].strip() if len(fields) == 2 else ""
        try:
            stored = int(fields[0])
            new = class_names.index(target) if target in class_names else int(target)
        except ValueError:
            raise SeglabError(
                f"{path}:{number}: expected `STORED NEW` (two label values, or a value and a "
                f"class name), got {line.strip()!r}"
            ) from None
        if not (0 <= new < len(class_names) or new == IGNORE_INDEX):
            raise SeglabError(
                f"{path}:{number}: {new} is not a class id (0..{len(class_names) - 1}) "
                f"or {IGNORE_INDEX}"
            )
        mapping[stored] = new
    return mapping


def apply_label_map(values: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    """`values` with every stored value in `mapping` replaced (all at once: {1: 2, 2: 1} swaps)."""
    out = values.copy()
    for stored, new in mapping.items():
        out[values == stored] = new
    return out


def only_ignore_message(mask_path: Path, split: str, names: list[str], root: Path) -> str:
    """The line for a split whose masks hold only 0 and 255: binary masks saved as 0/255."""
    return (
        f"{mask_path}: the masks of split {split!r} hold only 0 and {IGNORE_INDEX}, and "
        f"{IGNORE_INDEX} means ignore, so class 1 ({names[1]!r}) never appears and those pixels "
        f"would not be trained on; if {IGNORE_INDEX} marks {names[1]!r}, write `{IGNORE_INDEX} 1` "
        f"in {root / 'label_map.txt'}"
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
