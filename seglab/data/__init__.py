"""Datasets (the folder layout, the embedded shapes set), transforms and label checks."""

from seglab.data.folder import ClassInfo, FolderDataset, check_dataset, read_classes_file
from seglab.data.labels import IGNORE_INDEX
from seglab.data.shapes import write_shapes_dataset

__all__ = [
    "IGNORE_INDEX",
    "ClassInfo",
    "FolderDataset",
    "check_dataset",
    "read_classes_file",
    "write_shapes_dataset",
]
