"""Datasets (the folder layout, the standard releases, the embedded shapes set), transforms and
label checks."""

from seglab.data.ade20k import ADE20K
from seglab.data.camvid import CamVid
from seglab.data.cityscapes import Cityscapes, train_ids_to_label_ids
from seglab.data.folder import ClassInfo, FolderDataset, check_dataset, read_classes_file
from seglab.data.labels import IGNORE_INDEX
from seglab.data.shapes import write_shapes_dataset
from seglab.data.summary import dataset_splits, dataset_summary
from seglab.data.voc import VOCSegmentation, write_sbd_train_aug
from seglab.errors import SeglabError

DATASET_FORMATS = {
    "folder": FolderDataset,
    "voc": VOCSegmentation,
    "cityscapes": Cityscapes,
    "camvid": CamVid,
    "ade20k": ADE20K,
}
"""data.format -> dataset class taking (root, split, transform, cache)."""


def build_dataset_class(format: str) -> type[FolderDataset]:
    """The dataset class registered as `format`; a one-line SeglabError lists the choices."""
    if format not in DATASET_FORMATS:
        raise SeglabError(
            f"data.format {format!r} is not one of: {', '.join(sorted(DATASET_FORMATS))}"
        )
    return DATASET_FORMATS[format]


def build_dataset(format: str, root, split: str, transform=None, cache: bool = False):
    """The dataset of `format` (see DATASET_FORMATS) at `root`, split `split`."""
    return build_dataset_class(format)(root, split, transform, cache)


__all__ = [
    "ADE20K",
    "DATASET_FORMATS",
    "IGNORE_INDEX",
    "CamVid",
    "Cityscapes",
    "ClassInfo",
    "FolderDataset",
    "VOCSegmentation",
    "build_dataset",
    "build_dataset_class",
    "check_dataset",
    "dataset_splits",
    "dataset_summary",
    "read_classes_file",
    "train_ids_to_label_ids",
    "write_sbd_train_aug",
    "write_shapes_dataset",
]
