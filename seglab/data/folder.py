"""The generic folder layout, which every other dataset in seglab is converted to or read like.

    ROOT/
      classes.txt          one class per line, `name #rrggbb` (line i is class id i)
      images/NAME.png      RGB images (.png, .jpg, .jpeg, .bmp, .tif, .tiff)
      masks/NAME.png       label ids as pixel values (palette, 8-bit or 16-bit grayscale
                           PNG), 255 = ignore
      label_map.txt        optional: `STORED NEW` per line, mask values to rewrite on reading,
                           e.g. `255 1` for binary masks saved as 0/255
      train.txt, val.txt   one NAME per line; without split files every image is in `all`,
                           or data.val_fraction splits them (seglab/data/folder_layout.py)
      depth/NAME.png       optional: 16-bit depth, its scale in depth.txt (seglab/data/depth.py);
                           with it the dataset's inputs are ("image", "depth")

`check_dataset` reads every file once before training and reports the first problem as one
line naming the file and the fix. Files are read by seglab/data/images.py (EXIF orientation,
16-bit masks, the decompression-bomb limit; its docstring lists what each file mode becomes).
Other folder names and file suffixes (NAME_mask.png) are a FolderLayout (data/folder_layout.py);
RGB masks are read through classes.txt's colours when every class has one (data/colour_masks.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from seglab.data.colour_masks import read_mask_values
from seglab.data.depth import read_depth, read_depth_scale
from seglab.data.folder_layout import IMAGE_SUFFIXES, FolderLayout  # noqa: F401 (re-exported)
from seglab.data.images import (
    SWAPPING_ORIENTATIONS,
    read_label_values,
    read_rgb,
    stored_orientation,
)
from seglab.data.labels import (
    IGNORE_COLOR,
    IGNORE_INDEX,
    apply_label_map,
    check_label_values,
    default_palette,
    only_ignore_message,
    read_label_map,
)
from seglab.data.registry import register_dataset
from seglab.errors import SeglabError


@dataclass(frozen=True)
class ClassInfo:
    names: list[str]
    colors: list[tuple[int, int, int]]
    colour_coded: bool = False  # every line gives a colour: RGB masks are read through them

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
    names, colors, numbers, given = [], [], [], []
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
        given.append(bool(colour))
        numbers.append(number)
    if not names:
        raise SeglabError(f"{path} lists no classes; write one class name per line")
    for index, name in enumerate(names):
        if names.index(name) != index:
            lines_of = [str(n) for n, other in zip(numbers, names, strict=True) if other == name]
            raise SeglabError(
                f"{path}: class name {name!r} appears on lines {', '.join(lines_of)}; every "
                "class needs its own name (one line per class id)"
            )
    return ClassInfo(names, colors, all(given))


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB as displayed (EXIF orientation applied); a SeglabError names the
    file if it cannot be decoded (seglab.data.images.read_rgb)."""
    return read_rgb(path)


def read_mask(
    path: Path, label_map: dict[int, int] | None = None, classes: ClassInfo | None = None
) -> np.ndarray:
    """(H, W) uint8 label ids: the mask's true values (8- or 16-bit, see data/images.py), or
    an RGB mask's colours looked up in `classes` (data/colour_masks.py), rewritten by
    `label_map`; a value outside 0..255 is a SeglabError that names it."""
    if classes is None:
        values = read_label_values(path)
    else:
        values = read_mask_values(path, classes.colors, classes.colour_coded)
    if label_map:
        values = apply_label_map(values, label_map)
    if values.dtype != np.uint8:
        low, high = int(values.min(initial=0)), int(values.max(initial=0))
        if low < 0 or high > IGNORE_INDEX:
            value = low if low < 0 else high
            raise SeglabError(
                f"{path}: label value {value} is outside 0..{IGNORE_INDEX} (ids 0..254, "
                f"{IGNORE_INDEX} ignore); fix the mask or map the value in label_map.txt"
            )
        values = values.astype(np.uint8)
    return values


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
    With a depth/ folder the transform gets (image, mask, depth metres) and returns the depth
    as the image's last channel; without a transform the image is (4, H, W) float32, depth in
    metres last.
    """

    # Release readers (VOC, Cityscapes, ...) have no depth; subclasses with depth set both.
    depth_scale: float | None = None
    inputs: tuple[str, ...] = ("image",)

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform=None,
        cache: bool = False,
        layout: FolderLayout | None = None,
    ):
        self.root = Path(root)
        self.layout = layout or FolderLayout()
        if not self.root.is_dir():
            shapes = Path(root).as_posix().rstrip("/").endswith("data/shapes")
            hint = (
                "generate it with `seglab data shapes data/shapes`"
                if shapes
                else (
                    "a relative data.root in a config file is looked up beside the config, "
                    "then from the current directory"
                )
            )
            raise SeglabError(f"dataset folder {self.root.absolute()} does not exist; {hint}")
        self.classes = read_classes_file(self.root / "classes.txt")
        self.split = split
        self.names = self._read_split(split)
        self.transform = transform
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None
        # Stored mask value -> label id, e.g. {255: 1} for binary masks saved as 0/255.
        self.label_map = read_label_map(self.root / "label_map.txt", self.classes.names)
        has_depth = (self.root / "depth").is_dir()
        self.depth_scale = read_depth_scale(self.root) if has_depth else None
        self.inputs = ("image", "depth") if has_depth else ("image",)

    @property
    def num_classes(self) -> int:
        return self.classes.num_classes

    def _read_split(self, split: str) -> list[str]:
        split_file = self.root / f"{split}.txt"
        drawn = self.layout.fraction_split(self.root, split)
        if split_file.is_file():
            names = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        elif split == "all":
            names = self.layout.all_names(self.root)
        elif drawn is not None:
            names = drawn
        else:
            raise SeglabError(
                f"{split_file} is missing; list the images of split {split!r} there, one per line"
            )
        if not names:
            raise SeglabError(f"split {split!r} of {self.root} has no images")
        return names

    def image_path(self, index: int) -> Path:
        name = self.names[index]
        path = self.layout.image_path(self.root, name)
        if path is None:
            suffix = self.layout.image_suffix or ".*"
            raise SeglabError(
                f"{self.root / self.layout.image_dir / name}{suffix}: no image for {name!r} "
                f"listed in {self.split}.txt"
            )
        return path

    def mask_path(self, index: int) -> Path:
        return self.layout.mask_path(self.root, self.names[index])

    def depth_path(self, index: int) -> Path:
        return self.root / "depth" / f"{self.names[index]}.png"

    def load_depth(self, index: int) -> np.ndarray:
        """(H, W) float32 depth in metres (0 = none), unchecked."""
        return read_depth(self.depth_path(index), self.depth_scale)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 image and (H, W) uint8 mask, unchecked."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        sample = (
            read_image(self.image_path(index)),
            read_mask(self.mask_path(index), self.label_map, self.classes),
        )
        if self._cache is not None:
            self._cache[index] = sample
        return sample

    def check(self, index: int) -> np.ndarray:
        """Raise a one-line SeglabError if sample `index` is unusable; else return the mask's
        distinct label ids (check_dataset looks for classes that never appear)."""
        image, mask = self.load(index)
        if image.shape[:2] != mask.shape:
            raise SeglabError(
                size_mismatch_message(self.image_path(index), image, mask, self.mask_path(index))
            )
        if self.depth_scale is not None and self.load_depth(index).shape != mask.shape:
            raise SeglabError(
                f"{self.depth_path(index)}: depth is not {mask.shape[1]}x{mask.shape[0]} as its "
                "mask; depth maps must match their images pixel for pixel"
            )
        return check_label_values(mask, self.num_classes, self.mask_path(index))

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        image, mask = self.load(index)
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        mask = torch.from_numpy(mask.astype(np.int64))
        extra = () if self.depth_scale is None else (torch.from_numpy(self.load_depth(index)),)
        if self.transform is None:
            return (torch.cat([image.float(), extra[0][None]]) if extra else image), mask
        if seed is None:
            return self.transform(image, mask, *extra)
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only: torch.manual_seed also queues a lazy CUDA seeding that
            # formats the Python stack each call (~1 ms, 3/4 of the demo's loading time).
            torch.random.default_generator.manual_seed(seed)
            return self.transform(image, mask, *extra)


def check_dataset(dataset: FolderDataset, progress: bool = True) -> None:
    """Read every sample once; raise the first problem as a one-line SeglabError, and refuse a
    split whose masks hold only 0 and 255 (ignore) without a label_map.txt."""
    seen: set[int] = set()
    first_with_ignore = None
    for index in tqdm(
        range(len(dataset)),
        desc=f"checking {dataset.split}",
        unit="img",
        disable=not progress,
        leave=False,
    ):
        values = dataset.check(index)
        if values is not None and not getattr(dataset, "label_map", None):
            seen.update(int(v) for v in values)
            first_with_ignore = first_with_ignore or (
                dataset.mask_path(index) if IGNORE_INDEX in values else None
            )
    # Binary masks saved as 0/255 (Carvana, ISIC, Kvasir exports) would train with every
    # foreground pixel ignored: refuse when 255 appears and no class but 0 ever does.
    if first_with_ignore is not None and seen <= {0, IGNORE_INDEX} and dataset.num_classes > 1:
        raise SeglabError(
            only_ignore_message(
                first_with_ignore, dataset.split, dataset.classes.names, dataset.root
            )
        )


def size_mismatch_message(
    image_path: Path, image: np.ndarray, mask: np.ndarray, mask_path: Path
) -> str:
    """The check's line for an image and mask of different sizes, naming an EXIF rotation."""
    (h, w), (mh, mw) = image.shape[:2], mask.shape
    orientation, (stored_w, stored_h) = stored_orientation(image_path)
    shown = f"{w}x{h}"
    if orientation in SWAPPING_ORIENTATIONS:
        shown += (
            f" as displayed (EXIF orientation {orientation} rotates the stored "
            f"{stored_w}x{stored_h} {image_path.name})"
        )
        if (stored_w, stored_h) == (mw, mh):
            shown += (
                "; the mask matches the stored orientation: rotate the mask to the displayed one"
            )
    return (
        f"{mask_path}: mask is {mw}x{mh} but its image is {shown}; masks must match their "
        "images pixel for pixel"
    )
