"""COCO-format instance datasets: images plus an instances JSON (polygons or RLE masks).

    ROOT/
      annotations/instances_SPLIT.json   COCO's "images", "annotations", "categories"
      SPLIT/FILE_NAME                    the images, as COCO releases them (train2017/...)
      images/FILE_NAME                   ... or here when ROOT/SPLIT/ does not exist (the
                                         layout `seglab data shapes --instances` writes)

Labels are contiguous: category ids sorted, the first is label 1, and label 0 is the
background (Mask R-CNN's num_classes counts it: COCO's 80 categories make 81).
`category_ids[label - 1]` maps a label back to the JSON's id (for results files).
Crowd annotations (iscrowd 1) are left out of the training targets, as torchvision's and
Detectron's COCO loaders do; COCO evaluation reads them from the JSON itself.

A sample is (image (3, H, W) float32 in [0, 1], target) with target "boxes" (N, 4) x1y1x2y2
float32 pixels, "labels" (N,) int64, "masks" (N, H, W) uint8, "image_id" int, "ids" (N,)
annotation ids. `check(index)` refuses a bad annotation (empty mask, box outside the image
or without area, unknown category id) as one line naming the JSON and the annotation id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seglab.data.folder import ClassInfo
from seglab.data.images import image_size, read_rgb
from seglab.data.labels import default_palette
from seglab.data.registry import register_dataset
from seglab.errors import SeglabError

BOX_SLACK = 1.0
"""Pixels a box may pass the image border by (COCO's float boxes round outwards)."""


def mask_utils():
    """pycocotools.mask, or a one-line error naming the extra that installs it."""
    try:
        from pycocotools import mask
    except ImportError:
        raise SeglabError(
            "COCO masks need pycocotools: pip install 'seglab[coco]' (or pycocotools)"
        ) from None
    return mask


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """(H, W) bool -> COCO's uncompressed RLE: run lengths of the column-major pixels, the
    first run counting zeros (may be 0). Written without pycocotools."""
    flat = np.asarray(mask, bool).flatten(order="F")
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": list(mask.shape), "counts": counts}


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO segmentation (polygons, uncompressed or compressed RLE) -> (H, W) uint8 mask."""
    coco_mask = mask_utils()
    if isinstance(segmentation, list):  # polygons [[x1, y1, x2, y2, ...], ...]
        rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = coco_mask.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        counts = segmentation["counts"]
        rle = {
            "size": segmentation["size"],
            "counts": counts.encode() if isinstance(counts, str) else counts,
        }
    else:
        raise ValueError("not polygons or RLE")
    return coco_mask.decode(rle)


def category_classes(categories: list[dict]) -> tuple[ClassInfo, list[int]]:
    """ClassInfo with "background" first and the category ids in label order."""
    ordered = sorted(categories, key=lambda c: c["id"])
    names = ["background", *(str(c["name"]) for c in ordered)]
    return ClassInfo(names, default_palette(len(names))), [int(c["id"]) for c in ordered]


def hflip_sample(image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
    """Mirror image (C, H, W), masks (N, H, W) and boxes: x1' = W - x2, x2' = W - x1."""
    width = image.shape[-1]
    boxes = target["boxes"].clone()
    boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
    return image.flip(-1), {**target, "boxes": boxes, "masks": target["masks"].flip(-1)}


class InstanceTransform:
    """The instance training augmentation: horizontal flip with probability 0.5 (the paper's
    only one; scale jitter is the model's min_size given as a list)."""

    def __init__(self, hflip: bool = True) -> None:
        self.hflip = hflip

    def __call__(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        if self.hflip and torch.rand(()).item() < 0.5:
            return hflip_sample(image, target)
        return image, target


@register_dataset(
    "coco",
    "COCO instances: ROOT/annotations/instances_SPLIT.json, images in ROOT/SPLIT/ or "
    "ROOT/images/ (polygons or RLE; `seglab data shapes --instances` writes one)",
)
class COCOInstances(torch.utils.data.Dataset):
    """A COCO-format instance split; see the module docstring for the layout and samples."""

    task = "instance"

    def __init__(self, root: str | Path, split: str = "train", transform=None, cache: bool = False):
        self.root, self.split, self.transform = Path(root), split, transform
        self.annotation_path = self.root / "annotations" / f"instances_{split}.json"
        if not self.annotation_path.is_file():
            raise SeglabError(
                f"{self.annotation_path} is missing; a COCO dataset has "
                "annotations/instances_SPLIT.json (try `seglab data shapes --instances`)"
            )
        try:
            data = json.loads(self.annotation_path.read_text())
            self.classes, self.category_ids = category_classes(data["categories"])
            self.images = sorted(data["images"], key=lambda image: image["id"])
            annotations = data["annotations"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise SeglabError(
                f"{self.annotation_path}: not a COCO instances file ({type(error).__name__}: "
                f"{error}); it needs images, annotations and categories"
            ) from None
        self.by_image: dict[int, list[dict]] = {image["id"]: [] for image in self.images}
        for annotation in annotations:
            self.by_image.setdefault(annotation.get("image_id"), []).append(annotation)
        self.names = [Path(image["file_name"]).stem for image in self.images]
        self.image_dir = self.root / split if (self.root / split).is_dir() else self.root / "images"
        self.label_of = {cid: label for label, cid in enumerate(self.category_ids, start=1)}
        self._cache: dict[int, Any] | None = {} if cache else None
        if not self.images:
            raise SeglabError(f"{self.annotation_path}: split {split!r} has no images")

    @property
    def num_classes(self) -> int:
        return self.classes.num_classes

    @classmethod
    def available_splits(cls, root: str | Path) -> list[str]:
        files = sorted((Path(root) / "annotations").glob("instances_*.json"))
        return [p.stem.removeprefix("instances_") for p in files]

    def __len__(self) -> int:
        return len(self.images)

    def image_path(self, index: int) -> Path:
        return self.image_dir / self.images[index]["file_name"]

    def _where(self, annotation: dict, index: int) -> str:
        return (
            f"{self.annotation_path}: annotation {annotation.get('id')} "
            f"(image {self.images[index]['file_name']})"
        )

    def _decode(self, annotation: dict, index: int, height: int, width: int):
        """(label, x1y1x2y2 box, mask) of one annotation; a bad one is a one-line error."""
        where = self._where(annotation, index)
        label = self.label_of.get(annotation.get("category_id"))
        if label is None:
            raise SeglabError(
                f"{where}: unknown category id {annotation.get('category_id')!r} (the JSON's "
                f"categories are {self.category_ids}); fix the id or add the category"
            )
        try:
            x, y, w, h = (float(v) for v in annotation["bbox"])
        except (KeyError, TypeError, ValueError):
            raise SeglabError(f"{where}: bbox must be [x, y, width, height]") from None
        if w <= 0 or h <= 0:
            raise SeglabError(f"{where}: bbox {annotation['bbox']} has no area; remove it")
        if (
            x < -BOX_SLACK
            or y < -BOX_SLACK
            or x + w > width + BOX_SLACK
            or y + h > height + BOX_SLACK
        ):
            raise SeglabError(
                f"{where}: bbox {annotation['bbox']} lies outside the {width}x{height} image; "
                "fix the box or the image's width/height"
            )
        try:
            mask = decode_segmentation(annotation.get("segmentation"), height, width)
        except (ValueError, TypeError, KeyError, IndexError) as error:
            raise SeglabError(
                f"{where}: segmentation is not polygons or RLE for {width}x{height} ({error})"
            ) from None
        if mask.shape != (height, width):
            raise SeglabError(f"{where}: RLE size {list(mask.shape)} is not [{height}, {width}]")
        if not mask.any():
            raise SeglabError(f"{where}: the mask is empty; remove the annotation or redraw it")
        return label, [x, y, x + w, y + h], mask

    def load(self, index: int) -> tuple[np.ndarray, dict]:
        """(H, W, 3) uint8 image and the target as numpy arrays (crowds left out)."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        info = self.images[index]
        image = read_rgb(self.image_path(index))
        height, width = image.shape[:2]
        labels, boxes, masks, ids = [], [], [], []
        for annotation in self.by_image.get(info["id"], []):
            if annotation.get("iscrowd", 0):
                continue
            label, box, mask = self._decode(annotation, index, height, width)
            labels.append(label), boxes.append(box), masks.append(mask)
            ids.append(int(annotation.get("id", -1)))
        target = {
            "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
            "labels": np.asarray(labels, np.int64),
            "masks": np.stack(masks) if masks else np.zeros((0, height, width), np.uint8),
            "image_id": int(info["id"]),
            "ids": np.asarray(ids, np.int64),
        }
        sample = (image, target)
        if self._cache is not None:
            self._cache[index] = sample
        return sample

    def coco_ground_truth(self) -> dict:
        """The split's instances JSON as COCOeval reads it (crowds included)."""
        return json.loads(self.annotation_path.read_text())

    def check(self, index: int) -> None:
        """Raise a one-line SeglabError if image `index` or one of its annotations is unusable."""
        info = self.images[index]
        path = self.image_path(index)
        if not path.is_file():
            raise SeglabError(
                f"{path}: image {info['file_name']} of {self.annotation_path.name} not found"
            )
        width, height = image_size(path)
        if (info.get("width", width), info.get("height", height)) != (width, height):
            raise SeglabError(
                f"{path}: the image is {width}x{height} but {self.annotation_path} says "
                f"{info.get('width')}x{info.get('height')}; fix the JSON's width/height"
            )
        for annotation in self.by_image.get(info["id"], []):
            self._decode(annotation, index, height, width)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, target = self.load(index)
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255
        target = {
            key: torch.from_numpy(value) if isinstance(value, np.ndarray) else value
            for key, value in target.items()
        }
        if self.transform is None:
            return image, target
        if seed is None:
            return self.transform(image, target)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image, target)


def write_instances_json(
    path: Path,
    names: list[str],
    scenes: list[list[tuple[int, np.ndarray]]],
    categories: list[str],
    size: tuple[int, int],
) -> None:
    """A COCO instances file: image i is images/NAME.png, id i + 1; each (label, visible mask)
    of its scene an annotation with uncompressed RLE, its box and area from the mask."""
    images, annotations = [], []
    for image_id, (name, scene) in enumerate(zip(names, scenes, strict=True), start=1):
        for label, mask in scene:
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            box = [
                int(cols[0]),
                int(rows[0]),
                int(cols[-1] - cols[0] + 1),
                int(rows[-1] - rows[0] + 1),
            ]
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(label),
                    "segmentation": mask_to_rle(mask),
                    "area": int(mask.sum()),
                    "bbox": box,
                    "iscrowd": 0,
                }
            )
        height, width = size
        images.append(
            {"id": image_id, "file_name": f"{name}.png", "height": height, "width": width}
        )
    categories_json = [{"id": i, "name": n} for i, n in enumerate(categories, start=1)]
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"images": images, "annotations": annotations, "categories": categories_json}
    path.write_text(json.dumps(data, separators=(",", ":")))
