"""The generic folder layout, which every other dataset in seglab is converted to or read like.

    ROOT/
      classes.txt          one class per line, `name #rrggbb` (line i is class id i)
      images/NAME.png      RGB images (.png, .jpg, .jpeg, .bmp, .tif, .tiff)
      masks/NAME.png       label ids as pixel values (palette or 8-bit grayscale PNG),
                           255 = ignore
      train.txt, val.txt   one NAME per line; without split files every image is in `all`

`check_dataset` reads every file once before training and reports the first problem as one
line naming the file and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from seglab.data.labels import IGNORE_COLOR, IGNORE_INDEX, check_label_values, default_palette
from seglab.data.registry import register_dataset
from seglab.errors import SeglabError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class ClassInfo:
    names: list[str]
    colors: list[tuple[int, int, int]]

    @property
    def num_classes(self) -> int:
        return len(self.names)


def write_classes_file(
    path: Path, names: Sequence[str], colors: Sequence[tuple[int, int, int]]
) -> None:
    lines = [
        f"{name} #{r:02x}{g:02x}{b:02x}\n" for name, (r, g, b) in zip(names, colors, strict=True)
    ]
    Path(path).write_text("".join(lines))


def read_classes_file(path: Path) -> ClassInfo:
    """Parse classes.txt; a line without a colour gets the VOC palette's."""
    if not path.is_file():
        raise SeglabError(
            f"{path} is missing; write one class name per line (optionally `name #rrggbb`)"
        )
    names, colors = [], []
    lines = [line.strip() for line in path.read_text().splitlines()]
    palette = default_palette(len(lines))
    for number, line in enumerate(lines, start=1):
        if not line:
            continue
        name, _, colour = line.rpartition(" ")
        if not colour.startswith("#"):
            name, colour = line, ""
        if colour:
            try:
                rgb = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
            except ValueError:
                raise SeglabError(f"{path}:{number}: colour {colour!r} is not #rrggbb") from None
            if len(colour) != 7:
                raise SeglabError(f"{path}:{number}: colour {colour!r} is not #rrggbb")
        else:
            rgb = palette[len(names)]
        names.append(name.strip())
        colors.append(rgb)
    if not names:
        raise SeglabError(f"{path} lists no classes; write one class name per line")
    return ClassInfo(names, colors)


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB; a SeglabError names the file if it cannot be decoded."""
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except FileNotFoundError:
        raise SeglabError(f"{path}: image file not found") from None
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise SeglabError(
            f"{path}: cannot read image ({error}); replace the file or drop it from the split"
        ) from None


def read_mask(path: Path) -> np.ndarray:
    """(H, W) uint8 label ids from a palette or grayscale PNG."""
    try:
        with Image.open(path) as mask:
            if mask.mode not in ("P", "L", "I", "I;16"):
                raise SeglabError(
                    f"{path}: mask mode {mask.mode} holds colours, not label ids; save it as a "
                    "palette or 8-bit grayscale PNG whose pixel values are class ids"
                )
            return np.array(mask, dtype=np.uint8)
    except FileNotFoundError:
        raise SeglabError(
            f"{path}: mask file not found; every image needs a mask of the same name"
        ) from None
    except (OSError, ValueError) as error:
        raise SeglabError(f"{path}: cannot read mask ({error}); re-export the mask") from None


def write_mask(
    labels: np.ndarray, path: str | Path, colors: Sequence[tuple[int, int, int]]
) -> None:
    """Save (H, W) label ids as a palette PNG (ids as pixel values, colours for viewing)."""
    mask = Image.fromarray(labels.astype(np.uint8), mode="P")
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(colors)] = colors
    palette[IGNORE_INDEX] = IGNORE_COLOR
    mask.putpalette(palette.flatten().tolist())
    mask.save(path, format="PNG")


@register_dataset(
    "folder",
    "the generic layout: ROOT/classes.txt, images/, masks/ (ids as pixels, 255 ignore), "
    "SPLIT.txt lists (`seglab data shapes` writes one)",
)
class FolderDataset(torch.utils.data.Dataset):
    """Images and masks in the folder layout.

    __getitem__ takes an index, or (index, seed) from seglab's training sampler: the transform
    then draws its randomness from that seed alone, so augmentation does not depend on worker
    count or on where a resumed run restarted.
    Returns (image, mask): the transform's output, by default (3, H, W) uint8 and (H, W) int64.
    """

    def __init__(self, root: str | Path, split: str = "train", transform=None, cache: bool = False):
        self.root = Path(root)
        if not self.root.is_dir():
            raise SeglabError(
                f"dataset folder {self.root} does not exist; try `seglab data shapes`"
            )
        self.classes = read_classes_file(self.root / "classes.txt")
        self.split = split
        self.names = self._read_split(split)
        self.transform = transform
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    @property
    def num_classes(self) -> int:
        return self.classes.num_classes

    def _read_split(self, split: str) -> list[str]:
        split_file = self.root / f"{split}.txt"
        if split_file.is_file():
            names = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        elif split == "all":
            names = sorted(
                p.stem
                for p in (self.root / "images").glob("*")
                if p.suffix.lower() in IMAGE_SUFFIXES
            )
        else:
            raise SeglabError(
                f"{split_file} is missing; list the images of split {split!r} there, one per line"
            )
        if not names:
            raise SeglabError(f"split {split!r} of {self.root} has no images")
        return names

    def image_path(self, index: int) -> Path:
        name = self.names[index]
        for suffix in IMAGE_SUFFIXES:
            path = self.root / "images" / f"{name}{suffix}"
            if path.is_file():
                return path
        raise SeglabError(
            f"{self.root / 'images' / name}.*: no image for {name!r} listed in {self.split}.txt"
        )

    def mask_path(self, index: int) -> Path:
        return self.root / "masks" / f"{self.names[index]}.png"

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 image and (H, W) uint8 mask, unchecked."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        sample = read_image(self.image_path(index)), read_mask(self.mask_path(index))
        if self._cache is not None:
            self._cache[index] = sample
        return sample

    def check(self, index: int) -> None:
        """Raise a one-line SeglabError if sample `index` is unusable."""
        image, mask = self.load(index)
        if image.shape[:2] != mask.shape:
            raise SeglabError(
                f"{self.mask_path(index)}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                f"is {image.shape[1]}x{image.shape[0]}; masks must match their images pixel for "
                "pixel"
            )
        check_label_values(mask, self.num_classes, self.mask_path(index))

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, mask = self.load(index)
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        mask = torch.from_numpy(mask.astype(np.int64))
        if self.transform is None:
            return image, mask
        if seed is None:
            return self.transform(image, mask)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image, mask)


def check_dataset(dataset: FolderDataset, progress: bool = True) -> None:
    """Read every sample once; raise the first problem as a one-line SeglabError."""
    for index in tqdm(
        range(len(dataset)),
        desc=f"checking {dataset.split}",
        unit="img",
        disable=not progress,
        leave=False,
    ):
        dataset.check(index)
