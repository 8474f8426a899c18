"""Dataset formats (the `data.format` key) -> registered dataset classes, with descriptions.

    @register_dataset("voc", "PASCAL VOC 2012 release (VOCdevkit/VOC2012) ...")
    class VOCSegmentation(ReleaseDataset): ...

A dataset is one file under seglab/data holding one decorated class; seglab/data/__init__.py
imports every module of the package, so the file is all a new format needs. Config
validation, the CLI's --format help, the README's table and the tests read this registry.
A dataset class takes (root, split, transform, cache) and has `num_classes`, `__len__`,
`__getitem__` and `check(index)`, as FolderDataset does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from seglab.errors import SeglabError

T = TypeVar("T", bound=type)


@dataclass(frozen=True)
class DatasetInfo:
    """What the registry knows about one format: its class and a one-line description of the
    layout it reads (shown by `--format` help and the README)."""

    name: str
    cls: type
    description: str


DATASETS: dict[str, DatasetInfo] = {}


def register_dataset(name: str, description: str) -> Callable[[T], T]:
    """Class decorator: register `cls` as data.format `name` and set its `format_name`."""

    def decorate(cls: T) -> T:
        if name in DATASETS:
            raise ValueError(f"dataset format {name!r} is registered twice")
        declared = cls.__dict__.get("format_name")
        if declared not in (None, name):
            raise ValueError(f"{cls.__name__}.format_name is {declared!r}, registered as {name!r}")
        if "\n" in description or not description:
            raise ValueError(f"dataset format {name!r}: the description must be one line")
        cls.format_name = name
        DATASETS[name] = DatasetInfo(name, cls, description)
        return cls

    return decorate


def dataset_formats() -> dict[str, str]:
    """Registered format names (sorted) -> their descriptions."""
    return {name: DATASETS[name].description for name in sorted(DATASETS)}


def format_help_lines() -> list[str]:
    """'name: description' per registered format, for the CLI's --format help."""
    return [f"{name}: {description}" for name, description in dataset_formats().items()]


def unknown_format_message(format: Any, key: str = "data.format") -> str:
    return f"{key} {format!r} is not one of: {', '.join(sorted(DATASETS))}"


def dataset_class(format: str, key: str = "data.format") -> type:
    """The class registered as `format`; a one-line SeglabError names `key` and the choices."""
    info = DATASETS.get(format) if isinstance(format, str) else None
    if info is None:
        raise SeglabError(unknown_format_message(format, key))
    return info.cls


def build_dataset(format: str, root, split: str, transform=None, cache: bool = False, layout=None):
    """The dataset of `format` at `root`, split `split` (see dataset_formats()); `layout`: a
    folder dataset's FolderLayout (seglab/data/folder_layout.py data_layout), None: default."""
    cls = dataset_class(format)
    if layout is None:
        return cls(root, split, transform, cache)
    return cls(root, split, transform, cache, layout=layout)


def formats_markdown_table() -> str:
    """The README's table of dataset formats, one row per registered format."""
    rows = [f"| `{name}` | {text} |" for name, text in dataset_formats().items()]
    return "\n".join(["| `data.format` | layout it reads |", "|---|---|", *rows])
