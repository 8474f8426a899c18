"""The shared base of the standard datasets, read in their release layouts (VOC, Cityscapes,
CamVid, ADE20K) without converting them first.

A release dataset differs from the generic folder layout (seglab/data/folder.py) in three
ways only: where the files of a split are, the fixed class list, and a lookup table from the
release's raw mask values to seglab's train ids (0..K-1, 255 ignore). Everything else (caching,
(index, seed) keys, the transform) is FolderDataset's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seglab.data.folder import ClassInfo, FolderDataset, read_image, read_mask
from seglab.data.labels import IGNORE_INDEX
from seglab.errors import SeglabError


def label_lookup(mapping: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(256,) uint8 raw value -> train id (unlisted values -> 255), and (256,) bool "known".

    `mapping` lists every raw value the release may contain, ignored ones mapped to 255.
    """
    table = np.full(256, IGNORE_INDEX, np.uint8)
    known = np.zeros(256, bool)
    for raw, train_id in mapping.items():
        table[raw] = train_id
        known[raw] = True
    return table, known


class ReleaseDataset(FolderDataset):
    """A standard dataset in its release layout; subclasses set the class attributes and
    implement `_find_samples`.

    load(i) returns the (H, W, 3) uint8 image and the (H, W) uint8 mask in train ids;
    `load_raw_mask(i)` returns the mask as released.
    """

    format_name: str = ""
    """The data.format key this class is registered under."""
    class_info: ClassInfo
    raw_to_train: dict[int, int]
    """Every raw mask value of the release -> train id (255 for ignored)."""
    split_aliases: dict[str, str] = {}
    """seglab split name -> the release's own name (ADE20K's `val` -> `validation`)."""
    release_counts: dict[str, int] = {}
    """Images per split in the official release, reported by dataset_summary."""

    def __init__(
        self, root: str | Path, split: str = "train", transform=None, cache: bool = False
    ) -> None:
        # FolderDataset.__init__ reads classes.txt, which releases do not have: set up here.
        self.root = self.resolve_root(Path(root))
        self.classes = self.class_info
        self.split = split
        self.transform = transform
        self._cache = {} if cache else None
        self._lookup, self._known = label_lookup(self.raw_to_train)
        samples = self._find_samples(self.split_aliases.get(split, split))
        if not samples:
            raise SeglabError(f"split {split!r} of {self.root} has no images")
        self.names = [name for name, _, _ in samples]
        self._images = [image for _, image, _ in samples]
        self._masks = [mask for _, _, mask in samples]

    @classmethod
    def resolve_root(cls, root: Path) -> Path:
        """The folder that holds the release's top-level folders (overridden where the
        release nests them, e.g. VOCdevkit/VOC2012)."""
        if not root.is_dir():
            raise SeglabError(f"{cls.format_name} dataset folder {root} does not exist")
        return root

    @classmethod
    def available_splits(cls, root: str | Path) -> list[str]:
        """The splits present under `root` (for `seglab data check` without --split)."""
        raise NotImplementedError

    def _find_samples(self, split: str) -> list[tuple[str, Path, Path]]:
        """(name, image path, mask path) of every sample of the release's split `split`."""
        raise NotImplementedError

    def _require_dir(self, path: Path, what: str) -> Path:
        if not path.is_dir():
            raise SeglabError(
                f"{path} is missing: not a {self.format_name} release layout ({what})"
            )
        return path

    def image_path(self, index: int) -> Path:
        return self._images[index]

    def mask_path(self, index: int) -> Path:
        return self._masks[index]

    def load_raw_mask(self, index: int) -> np.ndarray:
        """(H, W) uint8 mask values as released (before the train-id mapping)."""
        return read_mask(self.mask_path(index))

    def to_train_ids(self, raw: np.ndarray) -> np.ndarray:
        """(H, W) raw release values -> (H, W) uint8 train ids (255 ignore)."""
        return self._lookup[raw]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 image and (H, W) uint8 mask in train ids, unchecked."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        sample = read_image(self.image_path(index)), self.to_train_ids(self.load_raw_mask(index))
        if self._cache is not None:
            self._cache[index] = sample
        return sample

    def check(self, index: int) -> None:
        """Raise a one-line SeglabError if sample `index` is unusable: unreadable, sizes that
        differ, or a raw mask value the release does not define."""
        image = read_image(self.image_path(index))
        raw = self.load_raw_mask(index)
        if image.shape[:2] != raw.shape:
            raise SeglabError(
                f"{self.mask_path(index)}: mask is {raw.shape[1]}x{raw.shape[0]} but its image "
                f"is {image.shape[1]}x{image.shape[0]}; masks must match their images pixel for "
                "pixel"
            )
        values = np.unique(raw)
        unknown = values[~self._known[values]]
        if unknown.size:
            valid = sorted(self.raw_to_train)
            raise SeglabError(
                f"{self.mask_path(index)}: mask value {int(unknown[0])} is not a "
                f"{self.format_name} label (valid: {_ranges(valid)}); is this the right "
                "--format, or a colour mask instead of label ids?"
            )


def _ranges(values: list[int]) -> str:
    """[0, 1, 2, 5, 255] -> '0..2, 5, 255'."""
    parts, start = [], None
    for i, value in enumerate(values):
        if start is None:
            start = value
        if i + 1 == len(values) or values[i + 1] != value + 1:
            parts.append(str(start) if start == value else f"{start}..{value}")
            start = None
    return ", ".join(parts)
