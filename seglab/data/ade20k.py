"""ADE20K as released for the MIT Scene Parsing Benchmark (SceneParse150).

    ROOT/ (ADEChallengeData2016)
      images/training/ADE_train_NNNNNNNN.jpg        20,210 images
      images/validation/ADE_val_NNNNNNNN.jpg         2,000 images
      annotations/training/ADE_train_NNNNNNNN.png   0 = "other", 1..150 = the classes
      annotations/validation/ADE_val_NNNNNNNN.png

Label 0 ("other objects", not evaluated) becomes 255 and the classes shift down by one to
train ids 0..149, as in the benchmark's own evaluation and every paper that reports on it.
"""

from __future__ import annotations

from pathlib import Path

from seglab.data.folder import ClassInfo
from seglab.data.labels import IGNORE_INDEX, default_palette
from seglab.data.registry import register_dataset
from seglab.data.release import ReleaseDataset

# objectInfo150.csv, first name of each row (train id 0 = raw label 1).
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug",
    "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier",
    "awning", "streetlight", "booth", "television receiver", "airplane", "dirt track",
    "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet",
    "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer",
    "plaything", "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name", "microwave",
    "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture", "hood",
    "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate",
    "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip
ADE20K_OTHER = 0


@register_dataset(
    "ade20k",
    "ADE20K SceneParse150 release (ADEChallengeData2016): images/ + annotations/ training, "
    "validation (150 classes)",
)
class ADE20K(ReleaseDataset):
    """ADEChallengeData2016: 150 classes; splits train (20,210) and val (2,000).

    The release names its folders training/validation; both those names and train/val work.
    Colours are the extended VOC colour map (the benchmark defines none).
    """

    format_name = "ade20k"
    class_info = ClassInfo(list(ADE20K_CLASSES), default_palette(len(ADE20K_CLASSES)))
    raw_to_train = {
        ADE20K_OTHER: IGNORE_INDEX,
        **{raw: raw - 1 for raw in range(1, len(ADE20K_CLASSES) + 1)},
    }
    split_aliases = {"train": "training", "val": "validation"}
    release_counts = {"train": 20210, "val": 2000, "training": 20210, "validation": 2000}

    @classmethod
    def resolve_root(cls, root: Path) -> Path:
        nested = root / "ADEChallengeData2016"
        return super().resolve_root(nested if (nested / "images").is_dir() else root)

    @classmethod
    def available_splits(cls, root: str | Path) -> list[str]:
        images = cls.resolve_root(Path(root)) / "images"
        return [s for s, folder in cls.split_aliases.items() if (images / folder).is_dir()]

    def _find_samples(self, split: str) -> list[tuple[str, Path, Path]]:
        images = self._require_dir(self.root / "images" / split, "images")
        masks = self._require_dir(self.root / "annotations" / split, "annotations")
        return [
            (image.stem, image, masks / f"{image.stem}.png")
            for image in sorted(images.glob("*.jpg"))
        ]
