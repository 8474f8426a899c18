"""The embedded synthetic dataset: scenes of objects whose class is their shape.

Background plus five object classes (disc, square, triangle, ring, cross). Everything else is
random per object: colour, texture (noise, stripes), size, rotation, position, and occlusion by
objects drawn later. A model can only score well by learning shape, which makes the set a fair,
offline stand-in for a real dataset. Written in the generic folder layout (seglab/data/folder.py)
so that it goes through the same loader and checks as a user's own data.

The RGB-D variant (`seglab data shapes --depth`) adds depth/ in millimetres: the background is
a plane about 5 m away, each object a surface at its own depth, and the square is two classes,
near_square (1-2 m) and far_square (3-4 m), drawn from the same sizes and colours: only depth
tells them apart, so an RGB-D model can beat an RGB one on them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from seglab.data.depth import write_depth, write_depth_description
from seglab.data.folder import write_classes_file, write_mask

SHAPE_CLASSES = ("background", "disc", "square", "triangle", "ring", "cross")
SHAPE_COLORS = [
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
]

DEPTH_SHAPE_CLASSES = ("background", "disc", "near_square", "far_square", "triangle", "ring",
                       "cross")  # fmt: skip
DEPTH_SHAPE_COLORS = [*SHAPE_COLORS[:3], (145, 30, 180), *SHAPE_COLORS[3:]]
NEAR_SQUARE, FAR_SQUARE = 2, 3


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a rotated square, triangle or cross of circumradius about r."""
    if kind == "square":
        points = [(math.cos(a), math.sin(a)) for a in np.arange(4) * math.pi / 2 + math.pi / 4]
    elif kind == "triangle":  # a little larger: a triangle of radius r covers less than a square
        points = [(1.15 * math.cos(a), 1.15 * math.sin(a)) for a in np.arange(3) * 2 * math.pi / 3]
    else:  # cross: arms of half-width 0.35 r
        a, b = 0.35, 1.0
        points = [(a, b), (a, a), (b, a), (b, -a), (a, -a), (a, -b)]
        points += [(-a, -b), (-a, -a), (-b, -a), (-b, a), (-a, a), (-a, b)]
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * cos - y * sin), cy + r * (x * sin + y * cos)) for x, y in points]


def shape_mask(kind: str, size: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """(size, size) bool mask of one object."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if kind in ("disc", "ring"):
        outer = 0.95 * r
        draw.ellipse([cx - outer, cy - outer, cx + outer, cy + outer], fill=1)
        if kind == "ring":
            inner = 0.5 * r
            draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    else:
        draw.polygon(_polygon(kind, cx, cy, r, angle), fill=1)
    return np.asarray(canvas, dtype=bool)


def _texture(rng: np.random.Generator, size: int, base: np.ndarray) -> np.ndarray:
    """(size, size, 3) float texture around colour `base`: noise, plus stripes half the time."""
    texture = base + rng.normal(0, rng.uniform(4, 16), (size, size, 3))
    if rng.random() < 0.5:
        period = rng.uniform(3, 9)
        angle = rng.uniform(0, math.pi)
        yy, xx = np.mgrid[:size, :size]
        phase = (xx * math.cos(angle) + yy * math.sin(angle)) / period
        texture += (np.sin(2 * math.pi * phase) > 0)[..., None] * rng.uniform(-40, 40, 3)
    return texture


def _contrasting_colour(rng: np.random.Generator, against: np.ndarray) -> np.ndarray:
    """A random colour at least 90 (L1 over RGB) from `against`, so objects stay visible."""
    while True:
        colour = rng.uniform(0, 255, 3)
        if np.abs(colour - against).sum() >= 90:
            return colour


def render_scene(
    rng: np.random.Generator,
    size: int,
    max_objects: int = 4,
    depth: bool = False,
    instances: list | None = None,
) -> tuple[np.ndarray, ...]:
    """One scene: (size, size, 3) uint8 image and (size, size) uint8 labels; with depth=True
    also (size, size) float32 metres, labels then of DEPTH_SHAPE_CLASSES. The depth draws come
    after the RGB ones, so the images are those of the RGB set with the same seed.
    instances: a list to receive (label, visible (size, size) bool mask) per object in drawing
    order; occluded objects keep their visible part, hidden ones are left out."""
    background = rng.uniform(0, 255, 3)
    yy, xx = np.mgrid[:size, :size] / size
    gradient = (xx * rng.uniform(-40, 40) + yy * rng.uniform(-40, 40))[..., None]
    image = _texture(rng, size, background) + gradient
    labels = np.zeros((size, size), np.uint8)
    masks = []
    for _ in range(rng.integers(1, max_objects + 1)):
        label = int(rng.integers(1, len(SHAPE_CLASSES)))
        r = rng.uniform(0.12, 0.24) * size
        cx, cy = rng.uniform(0.1, 0.9, 2) * size
        mask = shape_mask(SHAPE_CLASSES[label], size, cx, cy, r, rng.uniform(0, 2 * math.pi))
        image[mask] = _texture(rng, size, _contrasting_colour(rng, background))[mask]
        labels[mask] = label
        masks.append((label, mask))
    image = np.clip(image, 0, 255).astype(np.uint8)
    if instances is not None:
        _visible_parts(masks, instances)
    if not depth:
        return image, labels
    metres = 5.0 + (xx - 0.5) * rng.uniform(-1, 1) + (yy - 0.5) * rng.uniform(-1, 1)
    for label, mask in masks:  # in drawing order: later objects occlude earlier ones
        far = label == SHAPE_CLASSES.index("square") and rng.random() < 0.5
        if label == SHAPE_CLASSES.index("square"):
            metres[mask] = rng.uniform(3.0, 4.0) if far else rng.uniform(1.0, 2.0)
            labels[mask] = FAR_SQUARE if far else NEAR_SQUARE
        else:
            metres[mask] = rng.uniform(1.0, 4.0)
            labels[mask] = label + (label > NEAR_SQUARE - 1)  # ids after the squares shift by 1
    metres += rng.normal(0, 0.02, metres.shape)  # sensor noise
    if instances is not None:  # the depth classes
        instances[:] = [(int(labels[mask][0]), mask) for _, mask in instances]
    return image, labels, metres.astype(np.float32)


def _visible_parts(masks: list, instances: list) -> None:
    """Append (label, visible mask) of each drawn object: what no later object covers."""
    covered = np.zeros(masks[0][1].shape, bool)
    for label, mask in reversed(masks):
        visible = mask & ~covered
        covered |= mask
        if visible.any():
            instances.insert(0, (label, visible))


def write_shapes_dataset(
    root: str | Path,
    train: int = 1000,
    val: int = 200,
    size: int = 64,
    seed: int = 0,
    progress: bool = True,
    depth: bool = False,
    instances: bool = False,
    weak: bool = False,
) -> Path:
    """Write the dataset to `root` (images/, masks/, train.txt, val.txt, classes.txt; with
    depth=True also depth/ in millimetres and depth.txt, classes DEPTH_SHAPE_CLASSES).

    instances: also annotations/instances_{train,val}.json, each object a COCO instance of its
    class (data.format coco, seglab/data/coco.py) over the same images.

    weak: also tags/, points/, scribbles/ and boxes/ derived from each mask the way a person
    would annotate (seglab/data/weak_labels.py), from their own random stream.

    Deterministic: image i of a split depends only on (seed, split, i).
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    classes, colors = (
        (DEPTH_SHAPE_CLASSES, DEPTH_SHAPE_COLORS) if depth else (SHAPE_CLASSES, SHAPE_COLORS)
    )
    write_classes_file(root / "classes.txt", classes, colors)
    if depth:
        (root / "depth").mkdir(exist_ok=True)
        write_depth_description(root, 0.001)
    for split_index, (split, count) in enumerate((("train", train), ("val", val))):
        names, scenes = [], []
        for i in tqdm(
            range(count), desc=f"shapes {split}", unit="img", leave=False, disable=not progress
        ):
            rng = np.random.default_rng([seed, split_index, i])
            scene: list = []
            image, labels, *metres = render_scene(
                rng, size, depth=depth, instances=scene if instances else None
            )
            scenes.append(scene)
            name = f"{split}_{i:05d}"
            Image.fromarray(image).save(root / "images" / f"{name}.png")
            write_mask(labels, root / "masks" / f"{name}.png", colors)
            if weak:
                from seglab.data.weak_labels import write_weak_labels

                weak_rng = np.random.default_rng([seed, split_index, i, 1])
                write_weak_labels(root, name, labels, classes, weak_rng)
            if depth:
                write_depth(metres[0], root / "depth" / f"{name}.png", 0.001)
            names.append(name)
        (root / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
        if instances:
            from seglab.data.coco import write_instances_json

            path = root / "annotations" / f"instances_{split}.json"
            write_instances_json(path, names, scenes, classes[1:], (size, size))
    return root
