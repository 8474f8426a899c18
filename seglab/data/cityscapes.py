"""Cityscapes (fine annotations) in its release layout.

    ROOT/
      leftImg8bit/{train,val,test}/CITY/CITY_SEQ_FRAME_leftImg8bit.png
      gtFine/{train,val,test}/CITY/CITY_SEQ_FRAME_gtFine_labelIds.png

Masks hold the 34 labelIds (0..33); training uses the 19 evaluated classes as train ids 0..18,
everything else 255 (cityscapesScripts' labels.py). Predictions go back to labelIds for the
benchmark server with train_ids_to_label_ids.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seglab.data.folder import ClassInfo
from seglab.data.labels import IGNORE_INDEX
from seglab.data.registry import register_dataset
from seglab.data.release import ReleaseDataset
from seglab.errors import SeglabError

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip
CITYSCAPES_COLORS = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
    (0, 80, 100), (0, 0, 230), (119, 11, 32),
]  # fmt: skip
EVALUATED_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
"""labelId of train id 0..18 (road .. bicycle)."""
NUM_LABEL_IDS = 34  # 0 unlabeled .. 33 bicycle; license plate (-1) is never drawn in labelIds

LABEL_ID_TO_TRAIN_ID = {
    label_id: EVALUATED_LABEL_IDS.index(label_id)
    if label_id in EVALUATED_LABEL_IDS
    else IGNORE_INDEX
    for label_id in range(NUM_LABEL_IDS)
}


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """(H, W) train ids 0..18 (255 allowed) -> (H, W) uint8 labelIds for submission.

    255 becomes 0 ("unlabeled"), which the benchmark does not evaluate.
    """
    table = np.zeros(256, np.uint8)
    table[: len(EVALUATED_LABEL_IDS)] = EVALUATED_LABEL_IDS
    train_ids = np.asarray(train_ids)
    bad = (train_ids >= len(EVALUATED_LABEL_IDS)) & (train_ids != IGNORE_INDEX)
    if bad.any() or (train_ids < 0).any():
        value = int(train_ids[bad | (train_ids < 0)].flat[0])
        raise SeglabError(f"train id {value} is not a Cityscapes class (0..18 or 255)")
    return table[train_ids.astype(np.uint8)]


@register_dataset(
    "cityscapes",
    "Cityscapes release: leftImg8bit/ + gtFine/ labelIds (the 19 evaluated classes as train "
    "ids); train, val, test",
)
class Cityscapes(ReleaseDataset):
    """Cityscapes gtFine: 19 classes; train 2,975, val 500, test 1,525 (test masks are empty).

    Sample names are CITY/CITY_SEQ_FRAME, so predictions can be written per city.
    """

    format_name = "cityscapes"
    class_info = ClassInfo(list(CITYSCAPES_CLASSES), CITYSCAPES_COLORS)
    raw_to_train = LABEL_ID_TO_TRAIN_ID
    release_counts = {"train": 2975, "val": 500, "test": 1525}

    @classmethod
    def available_splits(cls, root: str | Path) -> list[str]:
        images = Path(root) / "leftImg8bit"
        return [s for s in ("train", "val", "test") if (images / s).is_dir()]

    def _find_samples(self, split: str) -> list[tuple[str, Path, Path]]:
        images = self._require_dir(self.root / "leftImg8bit" / split, "camera images")
        masks = self._require_dir(self.root / "gtFine" / split, "fine annotations")
        samples = []
        for image in sorted(images.glob("*/*_leftImg8bit.png")):
            stem = image.name[: -len("_leftImg8bit.png")]
            city = image.parent.name
            mask = masks / city / f"{stem}_gtFine_labelIds.png"
            samples.append((f"{city}/{stem}", image, mask))
        return samples
