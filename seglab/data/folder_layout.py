"""Where a folder dataset keeps its files, and its hold-out split (DataConfig keys).

    data:
      image_dir: JPEGImages        # default images
      mask_dir: annotations        # default masks
      image_suffix: .jpg           # default: any of .png .jpg .jpeg .bmp .tif .tiff
      mask_suffix: _mask.png       # default .png: masks named NAME_mask.png
      val_fraction: 0.2            # without train.txt/val.txt: a fixed 20% of the images is val

As MMSegmentation's img_suffix / seg_map_suffix: a sample NAME is the image file name without
image_suffix, and its mask is mask_dir/NAME + mask_suffix (both folders relative to data.root).

val_fraction: the images are ordered by the SHA-1 of their NAME and the first
round(fraction * N) (at least 1, at most N - 1) are split `val`, the rest `train`. The split
depends on the names alone (no seed, no file order), and adding images moves few others.
Split files win: with ROOT/train.txt or val.txt present, val_fraction is not used for it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from pathlib import Path

from seglab.errors import SeglabError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
FRACTION_SPLITS = ("train", "val")


@dataclass(frozen=True)
class FolderLayout:
    image_dir: str = "images"
    mask_dir: str = "masks"
    image_suffix: str | None = None  # None: any of IMAGE_SUFFIXES
    mask_suffix: str = ".png"
    val_fraction: float | None = None

    def __post_init__(self) -> None:
        fraction = self.val_fraction
        if fraction is not None and not 0 < fraction < 1:
            raise SeglabError(f"data.val_fraction {fraction} must lie strictly between 0 and 1")

    @property
    def is_default(self) -> bool:
        return self == FolderLayout()

    def image_suffixes(self) -> tuple[str, ...]:
        return (self.image_suffix,) if self.image_suffix else IMAGE_SUFFIXES

    def image_path(self, root: Path, name: str) -> Path | None:
        """The image file of `name`, or None when there is none."""
        for suffix in self.image_suffixes():
            path = root / self.image_dir / f"{name}{suffix}"
            if path.is_file():
                return path
        return None

    def mask_path(self, root: Path, name: str) -> Path:
        return root / self.mask_dir / f"{name}{self.mask_suffix}"

    def all_names(self, root: Path) -> list[str]:
        """Every sample NAME under image_dir (sorted); mask files there are not images."""
        names = set()
        shared = self.image_dir == self.mask_dir
        for path in (root / self.image_dir).glob("*"):
            if shared and path.name.endswith(self.mask_suffix):
                continue
            for suffix in self.image_suffixes():
                if path.name.lower().endswith(suffix.lower()) and len(path.name) > len(suffix):
                    names.add(path.name[: -len(suffix)])
                    break
        return sorted(names)

    def fraction_split(self, root: Path, split: str) -> list[str] | None:
        """Names of `split` drawn by val_fraction; None when it does not apply."""
        if self.val_fraction is None or split not in FRACTION_SPLITS:
            return None
        names = sorted(self.all_names(root), key=lambda n: hashlib.sha1(n.encode()).hexdigest())
        if len(names) < 2:
            raise SeglabError(
                f"{root / self.image_dir}: data.val_fraction needs at least 2 images, found "
                f"{len(names)}"
            )
        count = min(max(round(self.val_fraction * len(names)), 1), len(names) - 1)
        return sorted(names[:count] if split == "val" else names[count:])


def data_layout(data) -> FolderLayout | None:
    """The FolderLayout of a DataConfig, None when every key is the default; the keys are
    refused for formats other than folder (their releases have fixed layouts)."""
    layout = FolderLayout(**{f.name: getattr(data, f.name) for f in fields(FolderLayout)})
    if layout.is_default:
        return None
    if data.format != "folder":
        changed = [f.name for f in fields(FolderLayout) if getattr(layout, f.name) != f.default]
        raise SeglabError(
            f"data.{changed[0]} applies to data.format folder only, not {data.format!r}; "
            "remove it or convert the dataset to the folder layout"
        )
    return layout
