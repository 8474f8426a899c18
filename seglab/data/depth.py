"""Depth maps: the optional `depth/` folder of the folder layout, its scale, its normalisation.

    ROOT/depth/NAME.png    16-bit grayscale PNG, one stored unit = `metres_per_unit` metres,
                           0 = no measurement (the Kinect's holes)
    ROOT/depth.txt         `metres_per_unit 0.001` (millimetres, as NYU's and SUN RGB-D's PNGs)

A dataset with a depth/ folder has inputs ("image", "depth"); its samples carry depth as the
last channel of the model input, (C + 1, H, W): the image normalised as always, the depth in
metres normalised by DEPTH_MEAN and DEPTH_STD. Like the ImageNet statistics for colour, these
are one fixed pair for every dataset (ACNet's NYUv2 figures), so a model trained on one dataset
reads another's depth, and inference needs no statistics stored with the weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import tv_tensors

from seglab.errors import SeglabError

DEPTH_MEAN = 2.8425
"""Metres: the mean NYUv2 depth that ACNet normalises with (ACNet_train_V1_nyuv2.py)."""
DEPTH_STD = 0.9933
"""Metres: the standard deviation that goes with DEPTH_MEAN."""
DEPTH_FILE = "depth.txt"


class Depth(tv_tensors.Mask):
    """(H, W) float32 depth in metres as a tv_tensor: torchvision's v2 transforms treat it as a
    mask (nearest resizing, so edges never blend a near and a far surface into a depth that
    exists nowhere, as ACNet's RandomScale does); seglab pads it with 0 (no measurement)."""


def read_depth_scale(root: Path) -> float:
    """metres_per_unit from ROOT/depth.txt; a missing or malformed file is one line."""
    path = Path(root) / DEPTH_FILE
    if not path.is_file():
        raise SeglabError(
            f"{path} is missing: {Path(root) / 'depth'} needs its scale; write "
            "`metres_per_unit 0.001` there for depth PNGs in millimetres"
        )
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        key, _, value = line.strip().partition(" ")
        if key == "metres_per_unit":
            try:
                scale = float(value)
            except ValueError:
                scale = 0.0
            if not scale > 0:
                raise SeglabError(f"{path}:{number}: metres_per_unit {value!r} is not > 0")
            return scale
    raise SeglabError(f"{path} has no `metres_per_unit VALUE` line (e.g. 0.001 for millimetres)")


def write_depth_description(root: Path, metres_per_unit: float) -> None:
    (Path(root) / DEPTH_FILE).write_text(f"metres_per_unit {metres_per_unit:g}\n")


def read_depth_png(path: Path, missing_hint: str = "every image needs one in depth/") -> np.ndarray:
    """(H, W) stored values of a one-channel depth PNG; a missing or unreadable file, or one
    with colour channels, is one line naming it."""
    try:
        with Image.open(path) as image:
            values = np.asarray(image)
    except FileNotFoundError:
        raise SeglabError(f"{path}: depth file missing; {missing_hint}") from None
    except OSError as error:
        raise SeglabError(f"{path}: cannot read the depth PNG ({error})") from None
    if values.ndim != 2:
        raise SeglabError(f"{path}: depth must be one-channel (16-bit grayscale PNG)")
    return values


def depth_in_metres(values: np.ndarray, metres_per_unit: float) -> np.ndarray:
    """(H, W) stored depth values -> float32 metres; 0 stays 0 (no depth)."""
    return values.astype(np.float32) * np.float32(metres_per_unit)


def read_depth(path: Path, metres_per_unit: float) -> np.ndarray:
    """(H, W) float32 metres from a 16-bit (or 8-bit) grayscale PNG; 0 stays 0 (no depth)."""
    return depth_in_metres(read_depth_png(path), metres_per_unit)


def write_depth(depth: np.ndarray, path: Path, metres_per_unit: float = 0.001) -> None:
    """(H, W) metres -> 16-bit PNG of round(depth / metres_per_unit) (clipped to 0..65535)."""
    units = np.clip(np.round(depth / metres_per_unit), 0, 65535).astype(np.uint16)
    Image.fromarray(units).save(path, format="PNG")


def as_depth_tensor(depth) -> torch.Tensor:
    """A (H, W) array or tensor of metres -> (H, W) float32 tensor (Segmenter's depth input)."""
    if isinstance(depth, np.ndarray):
        depth = torch.from_numpy(np.ascontiguousarray(depth))
    if not isinstance(depth, torch.Tensor) or depth.ndim != 2:
        raise SeglabError("depth must be an (H, W) array of metres")
    return depth.float()


def normalize_depth(depth: torch.Tensor) -> torch.Tensor:
    """(..., H, W) metres -> (depth - DEPTH_MEAN) / DEPTH_STD, as the models were trained."""
    return (depth.float() - DEPTH_MEAN) / DEPTH_STD
