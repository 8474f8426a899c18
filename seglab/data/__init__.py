"""Datasets (the folder layout, the embedded shapes set), transforms and label checks."""

from seglab.data.folder import ClassInfo, FolderDataset, check_dataset, read_classes_file
from seglab.data.labels import IGNORE_INDEX
from seglab.data.shapes import write_shapes_dataset
from seglab.errors import SeglabError

DATASET_FORMATS = {"folder": FolderDataset}
"""data.format -> dataset class taking (root, split, transform, cache)."""


def build_dataset(format: str, root, split: str, transform=None, cache: bool = False):
    """The dataset of `format` (see DATASET_FORMATS) at `root`, split `split`."""
    if format not in DATASET_FORMATS:
        raise SeglabError(
            f"data.format {format!r} is not one of: {', '.join(sorted(DATASET_FORMATS))}"
        )
    return DATASET_FORMATS[format](root, split, transform, cache)

__all__ = [
    "DATASET_FORMATS",
    "IGNORE_INDEX",
    "build_dataset",
    "ClassInfo",
    "FolderDataset",
    "check_dataset",
    "read_classes_file",
    "write_shapes_dataset",
]
