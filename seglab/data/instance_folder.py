"""A folder layout for instance masks, for data that does not come as COCO JSON.

    ROOT/
      classes.txt            as the folder layout: line i is class id i, line 0 the background
      images/NAME.png        RGB images (any of seglab's image suffixes)
      instances/NAME.png     8- or 16-bit PNG, one value per object: class_id * 1000 + k
                             (k = 0, 1, ... numbers the objects of that class), the encoding
                             of Cityscapes' *_instanceIds.png; values below 1000 are pixels
                             of no object (background, stuff)
      train.txt, val.txt     one NAME per line

A sample is what data/coco.py gives (image (3, H, W) float in [0, 1], target with boxes from
the masks, labels, masks, image_id = index + 1). COCO evaluation builds its ground truth from
the PNGs (`coco_ground_truth`), so every evaluation and prediction path is the COCO one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seglab.data.coco import COCOInstances, mask_to_rle
from seglab.data.folder import IMAGE_SUFFIXES, read_classes_file
from seglab.data.images import read_label_values, read_rgb
from seglab.data.registry import register_dataset
from seglab.errors import SeglabError

INSTANCE_OFFSET = 1000
"""instances/ pixel value = class id * INSTANCE_OFFSET + object number (Cityscapes)."""


@register_dataset(
    "instance_folder",
    "instance masks: ROOT/classes.txt, images/, instances/NAME.png (class * 1000 + object "
    "number per pixel, Cityscapes' instanceIds), SPLIT.txt lists",
)
class InstanceFolder(COCOInstances):
    """Images and instance-id PNGs; see the module docstring for the layout."""

    def __init__(self, root: str | Path, split: str = "train", transform=None, cache: bool = False):
        self.root, self.split, self.transform = Path(root), split, transform
        if not self.root.is_dir():
            raise SeglabError(f"dataset folder {self.root} does not exist")
        self.classes = read_classes_file(self.root / "classes.txt")
        split_file = self.root / f"{split}.txt"
        if not split_file.is_file():
            raise SeglabError(f"{split_file} is missing; list the images of split {split!r}")
        self.names = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        if not self.names:
            raise SeglabError(f"split {split!r} of {self.root} has no images")
        self.category_ids = list(range(1, self.classes.num_classes))
        self.annotation_path = self.root / "instances"  # what error messages name
        self.images = [
            {"id": i + 1, "file_name": self._image_file(name)} for i, name in enumerate(self.names)
        ]
        self._cache = {} if cache else None

    def _image_file(self, name: str) -> str:
        for suffix in IMAGE_SUFFIXES:
            if (self.root / "images" / f"{name}{suffix}").is_file():
                return f"{name}{suffix}"
        raise SeglabError(f"{self.root / 'images' / name}.*: no image for {name!r}")

    def image_path(self, index: int) -> Path:
        return self.root / "images" / self.images[index]["file_name"]

    def instance_path(self, index: int) -> Path:
        return self.root / "instances" / f"{self.names[index]}.png"

    def load(self, index: int) -> tuple[np.ndarray, dict]:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        image = read_rgb(self.image_path(index))
        values = read_label_values(self.instance_path(index)).astype(np.int64)
        if values.shape != image.shape[:2]:
            (h, w), (vh, vw) = image.shape[:2], values.shape
            raise SeglabError(
                f"{self.instance_path(index)}: {vw}x{vh} but its image is {w}x{h}; "
                "instance masks must match their images pixel for pixel"
            )
        ids = [int(v) for v in np.unique(values) if v >= INSTANCE_OFFSET]
        labels = [v // INSTANCE_OFFSET for v in ids]
        unknown = [v for v, label in zip(ids, labels, strict=True) if label >= self.num_classes]
        if unknown:
            raise SeglabError(
                f"{self.instance_path(index)}: value {unknown[0]} is class "
                f"{unknown[0] // INSTANCE_OFFSET}, but classes.txt has {self.num_classes} "
                "classes; fix the mask or add the class"
            )
        masks = np.stack([values == v for v in ids]).astype(np.uint8) if ids else None
        boxes = []
        for mask in masks if masks is not None else []:
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            boxes.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])  # pixel edges
        target = {
            "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
            "labels": np.asarray(labels, np.int64),
            "masks": masks if masks is not None else np.zeros((0, *values.shape), np.uint8),
            "image_id": index + 1,
            "ids": np.asarray(ids, np.int64),
        }
        sample = (image, target)
        if self._cache is not None:
            self._cache[index] = sample
        return sample

    def check(self, index: int) -> None:
        self.load(index)  # sizes and class ids; masks from pixels are never empty

    def coco_ground_truth(self) -> dict:
        """The split as a COCO instances dict (for COCOeval)."""
        images, annotations = [], []
        for index in range(len(self)):
            image, target = self.load(index)
            h, w = image.shape[:2]
            images.append(
                {"id": index + 1, "file_name": self.names[index], "height": h, "width": w}
            )
            for label, box, mask in zip(
                target["labels"], target["boxes"], target["masks"], strict=True
            ):
                x1, y1, x2, y2 = (float(v) for v in box)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": index + 1,
                        "category_id": int(label),
                        "segmentation": mask_to_rle(mask.astype(bool)),
                        "area": int(mask.sum()),
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "iscrowd": 0,
                    }
                )
        categories = [{"id": i, "name": n} for i, n in enumerate(self.classes.names[1:], 1)]
        return {"images": images, "annotations": annotations, "categories": categories}

    @classmethod
    def available_splits(cls, root: str | Path) -> list[str]:
        return [p.stem for p in sorted(Path(root).glob("*.txt")) if p.name != "classes.txt"]


__all__ = ["INSTANCE_OFFSET", "InstanceFolder"]
