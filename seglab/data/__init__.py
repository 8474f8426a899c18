"""Datasets (the folder layout, the standard releases, the embedded shapes set), transforms and
label checks.

A dataset format is one file here with one `@register_dataset` class (seglab/data/registry.py).
Importing this package imports every module in it, so a new file is registered without a line
added here (a format cannot be left out by a forgotten import).
"""

import importlib
import pkgutil

from seglab.data.registry import (
    DATASETS,
    DatasetInfo,
    build_dataset,
    dataset_class,
    dataset_formats,
    format_help_lines,
    register_dataset,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

from seglab.data.ade20k import ADE20K  # noqa: E402  (re-exports, after every module is loaded)
from seglab.data.camvid import CamVid  # noqa: E402
from seglab.data.cityscapes import Cityscapes, train_ids_to_label_ids  # noqa: E402
from seglab.data.folder import (  # noqa: E402
    ClassInfo,
    FolderDataset,
    check_dataset,
    read_classes_file,
)
from seglab.data.labels import IGNORE_INDEX  # noqa: E402
from seglab.data.shapes import write_shapes_dataset  # noqa: E402
from seglab.data.summary import dataset_splits, dataset_summary  # noqa: E402
from seglab.data.voc import VOCSegmentation, write_sbd_train_aug  # noqa: E402

__all__ = [
    "ADE20K",
    "DATASETS",
    "IGNORE_INDEX",
    "CamVid",
    "Cityscapes",
    "ClassInfo",
    "DatasetInfo",
    "FolderDataset",
    "VOCSegmentation",
    "build_dataset",
    "check_dataset",
    "dataset_class",
    "dataset_formats",
    "dataset_splits",
    "dataset_summary",
    "format_help_lines",
    "read_classes_file",
    "register_dataset",
    "train_ids_to_label_ids",
    "write_sbd_train_aug",
    "write_shapes_dataset",
]
