"""Weak labels beside the folder layout: image tags, points, scribbles and boxes.

Each kind is optional and lives in its own folder of ROOT, one file per image NAME (the name
of images/NAME.*). Class names are those of ROOT/classes.txt; coordinates are pixels of the
image, x to the right, y down, (0, 0) the top-left pixel.

    ROOT/tags/NAME.txt        one class name per line: the classes present in the image
                              (background is not tagged: every image has it)
    ROOT/points/NAME.json     [[x, y, "class"], ...]: single annotated pixels (one click per
                              object, and one on the background), 0 <= x < W, 0 <= y < H
    ROOT/scribbles/NAME.png   a sparse mask of the image's size: class ids as pixel values
                              (8-bit, like masks/), 255 = unlabelled
    ROOT/boxes/NAME.json      [[x0, y0, x1, y1, "class"], ...]: one box per object, the
                              pixels x0 <= x < x1, y0 <= y < y1, so 0 <= x0 < x1 <= W and
                              0 <= y0 < y1 <= H

Every reader checks like the mask reader: a problem is one SeglabError line naming the file
and the fix (an unknown class name, a point or box outside the image, a scribble of another
size or with an id that is not a class). `points_mask` turns points into the sparse mask a
partial cross-entropy trains on (255 elsewhere), like a scribble.

`write_weak_labels` derives all four from a dense ground truth the way a person would
annotate (used by `seglab data shapes --weak`): an object is a connected component of one
class; its point is a random pixel of its interior (at least half its largest distance from
its border, so never on an edge); its scribble is the outline of that interior core, a
closed one-pixel stroke inside the object (as is the background's); its box is tight around
its visible pixels; the tags are the object classes present.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from seglab.data.labels import IGNORE_INDEX
from seglab.errors import SeglabError

KINDS = ("tags", "points", "scribbles", "boxes")
BACKGROUND = 0  # the class id never tagged and scribbled on the background region


def weak_label_path(root: str | Path, kind: str, name: str) -> Path:
    suffix = {"tags": ".txt", "points": ".json", "scribbles": ".png", "boxes": ".json"}[kind]
    return Path(root) / kind / f"{name}{suffix}"


def _class_id(path: Path, where: str, name, classes: Sequence[str]) -> int:
    if not isinstance(name, str) or name not in classes:
        raise SeglabError(
            f"{path}: {where}: class {name!r} is not in classes.txt; use one of "
            f"{', '.join(classes)}"
        )
    return classes.index(name)


def read_tags(path: Path, classes: Sequence[str]) -> list[int]:
    """Sorted class ids named in a tags file (blank lines skipped)."""
    ids = set()
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if line.strip():
            ids.add(_class_id(path, f"line {number}", line.strip(), classes))
    return sorted(ids)


def _read_json_list(path: Path, length: int, example: str) -> list:
    try:
        items = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise SeglabError(
            f"{path}: not readable JSON ({error}); write a list like {example}"
        ) from None
    if not isinstance(items, list) or any(
        not isinstance(item, list) or len(item) != length for item in items
    ):
        raise SeglabError(f"{path}: expected a list of {length}-item lists like {example}")
    return items


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_points(
    path: Path, classes: Sequence[str], size: tuple[int, int]
) -> list[tuple[int, int, int]]:
    """[(x, y, class id)] of a points file; size = (H, W) of the image."""
    height, width = size
    points = []
    for index, (x, y, name) in enumerate(_read_json_list(path, 3, '[[12, 30, "disc"]]')):
        where = f"point {index}"
        if not (_is_int(x) and _is_int(y) and 0 <= x < width and 0 <= y < height):
            raise SeglabError(
                f"{path}: {where} ({x}, {y}) is outside the {width}x{height} image; give "
                f"integer pixels 0 <= x < {width}, 0 <= y < {height}"
            )
        points.append((x, y, _class_id(path, where, name, classes)))
    return points


def read_boxes(
    path: Path, classes: Sequence[str], size: tuple[int, int]
) -> list[tuple[int, int, int, int, int]]:
    """[(x0, y0, x1, y1, class id)] of a boxes file (x1, y1 exclusive); size = (H, W)."""
    height, width = size
    boxes = []
    for index, (*corners, name) in enumerate(_read_json_list(path, 5, '[[4, 8, 20, 30, "disc"]]')):
        x0, y0, x1, y1 = corners
        inside = all(map(_is_int, corners)) and 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        if not inside:
            raise SeglabError(
                f"{path}: box {index} {corners} is outside the {width}x{height} image or "
                f"empty; give integers 0 <= x0 < x1 <= {width}, 0 <= y0 < y1 <= {height}"
            )
        boxes.append((x0, y0, x1, y1, _class_id(path, f"box {index}", name, classes)))
    return boxes


def read_scribbles(path: Path, num_classes: int, size: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 sparse labels of a scribble PNG: class ids, 255 unlabelled."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode not in ("L", "P"):
                raise SeglabError(
                    f"{path}: a {image.mode} image; save scribbles as 8-bit class ids "
                    f"(mode L or P), {IGNORE_INDEX} = unlabelled"
                )
            values = np.asarray(image)
    except OSError as error:
        raise SeglabError(f"{path}: not a readable PNG ({error}); rewrite the file") from None
    if values.shape != tuple(size):
        raise SeglabError(
            f"{path}: scribbles are {values.shape[1]}x{values.shape[0]} but the image is "
            f"{size[1]}x{size[0]}; draw them on the image's own size"
        )
    bad = values[(values >= num_classes) & (values != IGNORE_INDEX)]
    if bad.size:
        raise SeglabError(
            f"{path}: value {int(bad[0])} is not a class id (0..{num_classes - 1}) nor "
            f"{IGNORE_INDEX} (unlabelled); fix the scribble file"
        )
    return values


def read_weak_labels(
    root: str | Path, name: str, classes: Sequence[str], size: tuple[int, int]
) -> dict:
    """The weak labels that exist for image `name`: {kind: value} for the kinds present."""
    found = {}
    for kind in KINDS:
        path = weak_label_path(root, kind, name)
        if not path.is_file():
            continue
        if kind == "tags":
            found[kind] = read_tags(path, classes)
        elif kind == "points":
            found[kind] = read_points(path, classes, size)
        elif kind == "boxes":
            found[kind] = read_boxes(path, classes, size)
        else:
            found[kind] = read_scribbles(path, len(classes), size)
    return found


def points_mask(points: Sequence[tuple[int, int, int]], size: tuple[int, int]) -> np.ndarray:
    """(H, W) uint8 sparse labels: each point's class at its pixel, 255 elsewhere."""
    mask = np.full(size, IGNORE_INDEX, np.uint8)
    for x, y, label in points:
        mask[y, x] = label
    return mask


def _objects(labels: np.ndarray):
    """(class id, bool mask) per connected component (8-connected) of each class."""
    for label in np.unique(labels):
        if label == IGNORE_INDEX:
            continue
        components, count = ndimage.label(labels == label, structure=np.ones((3, 3)))
        for index in range(1, count + 1):
            yield int(label), components == index


def _interior_core(region: np.ndarray) -> np.ndarray:
    """The pixels at least half the region's largest depth from its border (the image edge
    counts as a border: a person does not click on the frame either)."""
    depth = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    return depth >= max(1.0, depth.max() / 2)


def derive_weak_labels(
    labels: np.ndarray, rng: np.random.Generator
) -> tuple[list[int], list, np.ndarray, list]:
    """(tags, points, scribbles, boxes) of a dense (H, W) label map; see the module doc."""
    scribbles = np.full(labels.shape, IGNORE_INDEX, np.uint8)
    points, boxes, tags = [], [], set()
    for label, region in _objects(labels):
        core = _interior_core(region)
        stroke = core & ~ndimage.binary_erosion(core)  # the core's outline, one pixel wide
        scribbles[stroke] = label
        ys, xs = np.nonzero(core)
        pick = int(rng.integers(len(xs)))
        points.append((int(xs[pick]), int(ys[pick]), label))
        if label != BACKGROUND:
            tags.add(label)
            ys, xs = np.nonzero(region)
            boxes.append((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1,
                          label))  # fmt: skip
    return sorted(tags), points, scribbles, boxes


def write_weak_labels(
    root: str | Path,
    name: str,
    labels: np.ndarray,
    classes: Sequence[str],
    rng: np.random.Generator,
) -> None:
    """Write tags/, points/, scribbles/ and boxes/ files of image `name` from its labels."""
    tags, points, scribbles, boxes = derive_weak_labels(labels, rng)
    for kind in KINDS:
        weak_label_path(root, kind, name).parent.mkdir(parents=True, exist_ok=True)
    weak_label_path(root, "tags", name).write_text("".join(f"{classes[t]}\n" for t in tags))
    points_json = [[x, y, classes[c]] for x, y, c in points]
    weak_label_path(root, "points", name).write_text(json.dumps(points_json))
    boxes_json = [[*corners, classes[c]] for *corners, c in boxes]
    weak_label_path(root, "boxes", name).write_text(json.dumps(boxes_json))
    Image.fromarray(scribbles, mode="L").save(weak_label_path(root, "scribbles", name))
