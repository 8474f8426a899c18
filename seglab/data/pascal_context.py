"""PASCAL-Context (Mottaghi et al., CVPR 2014) in the commonly converted mask-PNG layout.

    ROOT/ (VOCdevkit/VOC2010, or a folder that contains VOCdevkit/VOC2010 or VOC2010)
      JPEGImages/NAME.jpg                       the VOC 2010 images
      SegmentationClassContext/NAME.png         0 = background, 1..59 = the 59 classes
      ImageSets/SegmentationContext/{train,val}.txt     4,998 / 5,105 images

The masks are what MMSegmentation's tools/dataset_converters/pascal_context.py writes from the
VOC 2010 release and the Detail API's trainval_merged.json: the 459 labels mapped to the 59
most frequent classes plus background, the same mapping as PyTorch-Encoding's pcontext.py
(`_class_to_index`), whose tensors FastFCN and EncNet train on. Two protocols read the layout:
- "pcontext": 59 classes, background ignored (PyTorch-Encoding's `mask - 1`), the benchmark
  FastFCN reports (51.05 mIoU for EncNet+JPU R50); MMSeg's PascalContextDataset59.
- "pcontext60": 60 classes with background as class 0 (MMSeg's PascalContextDataset), the
  protocol of papers that count background (DUpsampling's 52.5 mIoU).
"""

from __future__ import annotations

from pathlib import Path

from seglab.data.folder import ClassInfo
from seglab.data.labels import IGNORE_INDEX, default_palette
from seglab.data.registry import register_dataset
from seglab.data.release import ReleaseDataset
from seglab.errors import SeglabError

PCONTEXT_CLASSES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book",
    "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth",
    "computer", "cow", "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food",
    "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse", "person",
    "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign",
    "sky", "snow", "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall",
    "water", "window", "wood",
)  # fmt: skip
"""Raw mask values 1..59 in this order (MMSeg's PascalContextDataset59.METAINFO)."""
SPLIT_DIR = Path("ImageSets") / "SegmentationContext"
MASK_DIR = "SegmentationClassContext"


def find_context_root(root: Path) -> Path:
    for candidate in (root, root / "VOC2010", root / "VOCdevkit" / "VOC2010"):
        if (candidate / MASK_DIR).is_dir():
            return candidate
    raise SeglabError(
        f"{root / 'VOCdevkit' / 'VOC2010' / MASK_DIR} is missing: not the converted "
        "PASCAL-Context layout; convert the VOC 2010 release with trainval_merged.json "
        "(MMSegmentation's tools/dataset_converters/pascal_context.py) and give the folder "
        "that holds VOCdevkit/"
    )


@register_dataset(
    "pcontext",
    "PASCAL-Context, converted masks (VOCdevkit/VOC2010/SegmentationClassContext): 59 classes, "
    "background ignored",
)
class PascalContext(ReleaseDataset):
    """PASCAL-Context, 59 classes; raw 0 (background) -> 255, raw c -> c - 1. Splits train
    (4,998) and val (5,105)."""

    class_info = ClassInfo(list(PCONTEXT_CLASSES), default_palette(len(PCONTEXT_CLASSES)))
    raw_to_train = {
        0: IGNORE_INDEX,
        **{raw: raw - 1 for raw in range(1, 60)},
        IGNORE_INDEX: IGNORE_INDEX,
    }
    release_counts = {"train": 4998, "val": 5105}

    @classmethod
    def resolve_root(cls, root: Path) -> Path:
        return find_context_root(root)

    @classmethod
    def available_splits(cls, root: str | Path) -> list[str]:
        sets = find_context_root(Path(root)) / SPLIT_DIR
        return [s for s in ("train", "val") if (sets / f"{s}.txt").is_file()]

    def _find_samples(self, split: str) -> list[tuple[str, Path, Path]]:
        split_file = self._require_dir(self.root / SPLIT_DIR, "split lists") / f"{split}.txt"
        if not split_file.is_file():
            raise SeglabError(f"{split_file} is missing; PASCAL-Context splits are train, val")
        self._require_dir(self.root / "JPEGImages", "images")
        names = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
        return [
            (name, self.root / "JPEGImages" / f"{name}.jpg", self.root / MASK_DIR / f"{name}.png")
            for name in names
        ]


@register_dataset(
    "pcontext60",
    "PASCAL-Context, converted masks (VOCdevkit/VOC2010/SegmentationClassContext): 59 classes "
    "+ background",
)
class PascalContext60(PascalContext):
    """PASCAL-Context with background as class 0: raw values are the train ids (60 classes)."""

    class_info = ClassInfo(
        ["background", *PCONTEXT_CLASSES], default_palette(len(PCONTEXT_CLASSES) + 1)
    )
    raw_to_train = {**{raw: raw for raw in range(60)}, IGNORE_INDEX: IGNORE_INDEX}
