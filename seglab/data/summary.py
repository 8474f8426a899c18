"""One-paragraph descriptions of a dataset split, for `seglab data check` and `data stats`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from seglab.data.folder import FolderDataset
from seglab.data.images import image_size
from seglab.errors import SeglabError


def dataset_splits(format: str, root: str | Path) -> list[str]:
    """The splits of the `format` dataset present under `root`; ["all"] for a folder dataset
    without split files."""
    from seglab.data.registry import dataset_class

    cls = dataset_class(format)
    if cls is FolderDataset or not hasattr(cls, "available_splits"):
        root = Path(root)
        names = [p.stem for p in sorted(root.glob("*.txt")) if p.name != "classes.txt"]
        return names or ["all"]
    splits = cls.available_splits(root)
    if not splits:
        raise SeglabError(f"{root}: no {format} splits found; is --format right?")
    return splits


def dataset_summary(dataset: FolderDataset) -> str:
    """'split: N images (release: M), K classes, sizes WxH (n), ...' for a loaded dataset.

    Reads only image headers; sizes are as displayed (EXIF orientation applied). The
    release count is shown for the standard datasets, so a partial download or a wrong split
    list is visible at once.
    """
    sizes = Counter()
    for index in range(len(dataset)):
        sizes[image_size(dataset.image_path(index))] += 1  # as displayed (EXIF)
    expected = getattr(dataset, "release_counts", {}).get(dataset.split)
    count = f"{len(dataset)} images"
    if expected is not None:
        count += f" (release: {expected})" if expected != len(dataset) else " (as released)"
    common = ", ".join(f"{w}x{h} ({n})" for (w, h), n in sizes.most_common(3))
    if len(sizes) > 3:
        common += f", {len(sizes) - 3} more sizes"
    return f"{dataset.split}: {count}, {dataset.num_classes} classes, image sizes WxH: {common}"
