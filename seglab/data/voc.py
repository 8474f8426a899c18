"""PASCAL VOC 2012 in its release layout, and the SBD-augmented `train_aug` split.

    ROOT/ (VOCdevkit/VOC2012, or a folder that contains VOCdevkit/VOC2012 or VOC2012)
      JPEGImages/NAME.jpg
      SegmentationClass/NAME.png        palette PNGs: pixel value = class id, 255 = void
      ImageSets/Segmentation/{train,val,trainval}.txt
      SegmentationClassAug/NAME.png     written by write_sbd_train_aug (`seglab data convert sbd`)
      ImageSets/Segmentation/train_aug.txt

train_aug (10,582 images) is the training set of DeepLab and most later VOC papers: SBD's
(Hariharan et al. 2011) train and val images plus VOC 2012 train, minus VOC 2012 val.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from seglab.data.folder import ClassInfo, read_mask, write_mask
from seglab.data.labels import IGNORE_INDEX, default_palette
from seglab.data.registry import register_dataset
from seglab.data.release import ReleaseDataset
from seglab.errors import SeglabError

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
VOC_PALETTE = default_palette(len(VOC_CLASSES))
"""The VOC colour map (bit-interleaved class ids); void is (224, 224, 192)."""


def find_voc_root(root: Path) -> Path:
    """The VOC2012 folder (the one holding JPEGImages) at or under `root`."""
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise SeglabError(
        f"{root / 'VOCdevkit' / 'VOC2012' / 'JPEGImages'} is missing: not a VOC 2012 release "
        "layout; give the folder that holds VOCdevkit/ (or VOC2012/ itself)"
    )


def _read_names(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


@register_dataset(
    "voc",
    "PASCAL VOC 2012 release (VOCdevkit/VOC2012): train, val, trainval; train_aug after "
    "`seglab data convert sbd`",
)
class VOCSegmentation(ReleaseDataset):
    """PASCAL VOC 2012 segmentation: 21 classes (background + 20 objects), 255 = void.

    Splits: train (1,464), val (1,449), trainval (2,913) from the release, and train_aug
    (10,582) after `seglab data convert sbd`.
    """

    format_name = "voc"
    class_info = ClassInfo(list(VOC_CLASSES), VOC_PALETTE)
    raw_to_train = {**{i: i for i in range(len(VOC_CLASSES))}, IGNORE_INDEX: IGNORE_INDEX}
    release_counts = {"train": 1464, "val": 1449, "trainval": 2913, "train_aug": 10582}

    @classmethod
    def resolve_root(cls, root: Path) -> Path:
        return find_voc_root(root)

    @classmethod
    def available_splits(cls, root: str | Path) -> list[str]:
        sets = find_voc_root(Path(root)) / "ImageSets" / "Segmentation"
        return [
            s for s in ("train", "val", "trainval", "train_aug") if (sets / f"{s}.txt").is_file()
        ]

    def _find_samples(self, split: str) -> list[tuple[str, Path, Path]]:
        sets = self._require_dir(self.root / "ImageSets" / "Segmentation", "split lists")
        split_file = sets / f"{split}.txt"
        if not split_file.is_file():
            fix = (
                "run `seglab data convert sbd SBD_ROOT VOC_ROOT` to write it"
                if split == "train_aug"
                else "VOC splits are train, val, trainval (and train_aug after conversion)"
            )
            raise SeglabError(f"{split_file} is missing; {fix}")
        masks = "SegmentationClassAug" if split == "train_aug" else "SegmentationClass"
        self._require_dir(self.root / masks, "masks")
        return [
            (name, self.root / "JPEGImages" / f"{name}.jpg", self.root / masks / f"{name}.png")
            for name in _read_names(split_file)
        ]


def find_sbd_root(root: Path) -> Path:
    """SBD's `dataset` folder (holding cls/, img/, train.txt, val.txt) at or under `root`."""
    for candidate in (root, root / "dataset", root / "benchmark_RELEASE" / "dataset"):
        if (candidate / "cls").is_dir():
            for name in ("train.txt", "val.txt"):
                if not (candidate / name).is_file():
                    raise SeglabError(f"{candidate / name} is missing: not an SBD release layout")
            return candidate
    raise SeglabError(
        f"{root / 'benchmark_RELEASE' / 'dataset' / 'cls'} is missing: not an SBD release "
        "layout; give the folder that holds benchmark_RELEASE/ (or its dataset/ folder)"
    )


def read_sbd_mat(path: Path) -> np.ndarray:
    """(H, W) uint8 class ids from an SBD cls/NAME.mat file (field GTcls.Segmentation)."""
    import scipy.io  # only the SBD conversion needs scipy

    try:
        mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
        labels = np.asarray(mat["GTcls"].Segmentation)
    except (OSError, ValueError, KeyError, AttributeError) as error:
        raise SeglabError(
            f"{path}: not an SBD class annotation ({error}); expected a GTcls.Segmentation field"
        ) from None
    if labels.ndim != 2 or labels.size == 0 or labels.max() >= len(VOC_CLASSES):
        raise SeglabError(f"{path}: GTcls.Segmentation is not an (H, W) map of ids 0..20")
    return labels.astype(np.uint8)


def write_sbd_train_aug(sbd_root: str | Path, voc_root: str | Path, progress: bool = True) -> int:
    """Convert SBD once into VOC's layout and write the train_aug split; returns its size.

    Writes VOC2012/SegmentationClassAug/NAME.png for every train_aug image, and
    ImageSets/Segmentation/train_aug.txt = (SBD train + SBD val + VOC train) - VOC val.
    Where VOC has its own annotation of an image it is used (finer, with void borders);
    otherwise SBD's. Images missing from JPEGImages are copied from SBD's img/.
    Nothing half-written is left: masks go to a temporary folder that is renamed at the end.
    """
    sbd = find_sbd_root(Path(sbd_root))
    voc = find_voc_root(Path(voc_root))
    sets = voc / "ImageSets" / "Segmentation"
    for split in ("train", "val"):
        if not (sets / f"{split}.txt").is_file():
            raise SeglabError(f"{sets / f'{split}.txt'} is missing: not a VOC 2012 release layout")
    voc_train, voc_val = _read_names(sets / "train.txt"), _read_names(sets / "val.txt")
    candidates = _read_names(sbd / "train.txt") + _read_names(sbd / "val.txt") + voc_train
    names = sorted(set(candidates) - set(voc_val))

    target = voc / "SegmentationClassAug"
    staging = Path(tempfile.mkdtemp(prefix=".SegmentationClassAug-", dir=voc))
    try:
        for name in tqdm(names, desc="converting SBD", unit="img", disable=not progress):
            voc_mask = voc / "SegmentationClass" / f"{name}.png"
            if voc_mask.is_file():
                labels = read_mask(voc_mask)
            elif (sbd / "cls" / f"{name}.mat").is_file():
                labels = read_sbd_mat(sbd / "cls" / f"{name}.mat")
            else:
                raise SeglabError(
                    f"{sbd / 'cls' / name}.mat is missing: {name} is listed in SBD's split files "
                    "but has no annotation; re-extract the SBD archive"
                )
            image = voc / "JPEGImages" / f"{name}.jpg"
            if not image.is_file():
                source = sbd / "img" / f"{name}.jpg"
                if not source.is_file():
                    raise SeglabError(f"{image} is missing, and SBD has no {source} to copy")
                shutil.copyfile(source, image)
            write_mask(labels, staging / f"{name}.png", VOC_PALETTE)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    listing = sets / "train_aug.txt"
    partial = listing.with_suffix(".txt.partial")
    partial.write_text("".join(f"{name}\n" for name in names))
    os.replace(partial, listing)
    return len(names)
