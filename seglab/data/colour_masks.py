"""Colour-coded RGB masks (CVAT, LabelMe and most annotation tools' exports), read through the
class colours of classes.txt.

A mask file whose pixels are RGB (or RGBA with a constant alpha) is read this way when every
line of classes.txt gives its class a colour (`name #rrggbb`): the pixel's colour is looked up
among the classes' colours; the VOC ignore colour #e0e0c0 (224, 224, 192), unless a class has
it, becomes 255 (ignore). A colour of no class is one SeglabError line naming the file, the
colour and its pixel count. Without colours on every line an RGB mask stays refused, with a
message saying to add them. Palette and grayscale masks are read as ids, as before
(seglab/data/images.py), whatever classes.txt says.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from seglab.data.images import _decode, _label_values, displayed
from seglab.data.labels import IGNORE_COLOR, IGNORE_INDEX
from seglab.errors import SeglabError


def _codes(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 -> (...) int64 0xRRGGBB."""
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def colours_to_ids(
    rgb: np.ndarray, colors: Sequence[tuple[int, int, int]], path: str | Path
) -> np.ndarray:
    """(H, W, 3) uint8 colours -> (H, W) uint8 class ids (class i has colors[i]); the ignore
    colour -> 255 unless a class has it; any other colour is a SeglabError naming it."""
    table = {int(code): i for i, code in enumerate(_codes(np.array(colors, np.uint8)))}
    table.setdefault(int(_codes(np.array(IGNORE_COLOR, np.uint8))), IGNORE_INDEX)
    keys = np.array(sorted(table), np.int64)
    values = np.array([table[k] for k in keys], np.uint8)
    codes = _codes(rgb)
    index = np.searchsorted(keys, codes).clip(0, len(keys) - 1)
    known = keys[index] == codes
    if not known.all():
        unknown, counts = np.unique(codes[~known], return_counts=True)
        worst = int(np.argmax(counts))
        code = int(unknown[worst])
        others = f" and {len(unknown) - 1} other unknown colours" if len(unknown) > 1 else ""
        raise SeglabError(
            f"{path}: colour #{code:06x} ({code >> 16}, {(code >> 8) & 255}, {code & 255}) on "
            f"{int(counts[worst])} pixels{others} is no class's colour in classes.txt; add its "
            "class there (`name #rrggbb`) or repaint those pixels"
        )
    return values[index]


def _mask_values(image: Image.Image, path: Path, colors, colour_coded: bool) -> np.ndarray:
    image = displayed(image)
    if image.mode not in ("RGB", "RGBA"):
        return _label_values(image, path)
    pixels = np.array(image)
    if image.mode == "RGBA":
        alpha = pixels[..., 3]
        if alpha.size and alpha.min() != alpha.max():
            raise SeglabError(
                f"{path}: mask mode RGBA has a varying alpha channel ({alpha.min()}..."
                f"{alpha.max()}); save the colour-coded mask as RGB without transparency"
            )
        pixels = pixels[..., :3]
    if not colour_coded:
        raise SeglabError(
            f"{path}: mask mode {image.mode} holds colours, not label ids; to read colour-coded "
            "masks give every class its colour in the dataset's classes.txt "
            "(`name #rrggbb` per line), or save the masks as palette/grayscale PNGs of class ids"
        )
    return colours_to_ids(pixels, colors, path)


def read_mask_values(
    path: str | Path, colors: Sequence[tuple[int, int, int]], colour_coded: bool
) -> np.ndarray:
    """(H, W) mask values: class ids of an RGB mask through `colors` when `colour_coded` (every
    class has a colour in classes.txt), else the stored ids (data/images.py)."""
    path = Path(path)
    return _decode(path, "mask", lambda image: _mask_values(image, path, colors, colour_coded))
