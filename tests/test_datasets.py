"""The standard datasets read in their release layouts: tiny fixture trees built in tmp_path,
label mappings checked against hand-written arrays, wrong layouts give one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from release_trees import (
    H,
    W,
    ade_tree,
    camvid_tree,
    cityscapes_tree,
    sbd_tree,
    tile,
    voc_tree,
    write_image,
    write_label_mask,
)

from seglab.data import (
    DATASETS,
    build_dataset,
    check_dataset,
    dataset_splits,
    dataset_summary,
    train_ids_to_label_ids,
    write_sbd_train_aug,
)
from seglab.data.folder import read_mask
from seglab.data.transforms import train_transform
from seglab.errors import SeglabError


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------------------- VOC + SBD
def test_voc_release_layout_reads_splits_classes_and_void(tmp_path):
    root = voc_tree(tmp_path)
    train = build_dataset("voc", root, "train")
    assert (len(train), train.num_classes) == (2, 21)
    assert train.classes.names[0] == "background" and train.classes.names[20] == "tvmonitor"
    assert train.classes.colors[1] == (128, 0, 0) and train.classes.colors[15] == (192, 128, 128)
    image, mask = train.load(0)
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(mask, tile([0, 1, 20, 255]))
    assert len(build_dataset("voc", root / "VOCdevkit" / "VOC2012", "trainval")) == 3
    assert dataset_splits("voc", root) == ["train", "val", "trainval"]
    check_dataset(train, progress=False)


def test_voc_wrong_layout_names_the_missing_folder(tmp_path):
    with pytest.raises(SeglabError) as error:
        build_dataset("voc", tmp_path, "train")
    assert "VOCdevkit/VOC2012/JPEGImages is missing" in _one_line(error)
    root = voc_tree(tmp_path)
    with pytest.raises(SeglabError) as error:
        build_dataset("voc", root, "train_aug")
    assert "train_aug.txt is missing" in _one_line(error)
    assert "seglab data convert sbd" in str(error.value)


def test_voc_check_rejects_a_value_outside_the_21_classes(tmp_path):
    root = voc_tree(tmp_path)
    bad = root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / "2007_000002.png"
    write_label_mask(bad, tile([0, 21]), palette=True)
    with pytest.raises(SeglabError) as error:
        check_dataset(build_dataset("voc", root, "train"), progress=False)
    assert "2007_000002.png: mask value 21 is not a voc label" in _one_line(error)


def test_sbd_conversion_writes_train_aug_as_sbd_plus_voc_train_minus_voc_val(tmp_path):
    root = voc_tree(tmp_path)
    voc = root / "VOCdevkit" / "VOC2012"
    sbd = sbd_tree(tmp_path, voc / "JPEGImages")
    count = write_sbd_train_aug(sbd, root, progress=False)
    expected_names = ["2007_000001", "2007_000002", "2008_000010", "2008_000011"]
    assert count == 4
    sets = voc / "ImageSets" / "Segmentation"
    assert (sets / "train_aug.txt").read_text().split() == expected_names
    aug = build_dataset("voc", root, "train_aug")
    assert aug.names == expected_names
    expected_masks = {
        "2007_000001": [0, 1, 20, 255],  # VOC's annotation, not SBD's all-9 one
        "2007_000002": [15, 15, 0, 255],  # VOC train only
        "2008_000010": [0, 3, 3, 12],
        "2008_000011": [19, 0, 2, 2],
    }
    for index, name in enumerate(aug.names):
        np.testing.assert_array_equal(aug.load(index)[1], tile(expected_masks[name]))
    assert (voc / "JPEGImages" / "2008_000010.jpg").is_file()  # copied from SBD's img/
    assert not list(voc.glob(".SegmentationClassAug-*"))  # no staging folder left behind
    check_dataset(aug, progress=False)


def test_sbd_conversion_wrong_layout_is_one_line(tmp_path):
    root = voc_tree(tmp_path)
    (tmp_path / "not_sbd").mkdir()
    with pytest.raises(SeglabError) as error:
        write_sbd_train_aug(tmp_path / "not_sbd", root, progress=False)
    assert "benchmark_RELEASE/dataset/cls is missing" in _one_line(error)
    assert not (root / "VOCdevkit" / "VOC2012" / "SegmentationClassAug").exists()


# ---------------------------------------------------------------------------- Cityscapes
def test_cityscapes_maps_label_ids_to_the_19_train_ids(tmp_path):
    root = cityscapes_tree(tmp_path)
    train = build_dataset("cityscapes", root, "train")
    assert len(train) == 3 and train.num_classes == 19
    assert train.names[0] == "aachen/aachen_000000_000019"
    assert train.classes.names[0] == "road" and train.classes.names[18] == "bicycle"
    np.testing.assert_array_equal(train.load(0)[1], tile([255, 0, 1, 2, 11, 13, 18, 255]))
    np.testing.assert_array_equal(train.load(1)[1], tile([3, 4, 5, 6, 7, 8, 9, 10]))
    np.testing.assert_array_equal(train.load(2)[1], tile([12, 14, 15, 16, 17, 255, 255, 255]))
    assert train.load_raw_mask(0)[0, 1] == 7
    assert dataset_splits("cityscapes", root) == ["train", "val"]
    check_dataset(train, progress=False)


def test_cityscapes_train_ids_to_label_ids_inverts_the_mapping():
    train_ids = np.array([[0, 1, 2, 3, 4], [5, 6, 7, 8, 255], [9, 10, 11, 12, 13]], np.uint8)
    expected = np.array([[7, 8, 11, 12, 13], [17, 19, 20, 21, 0], [22, 23, 24, 25, 26]])
    np.testing.assert_array_equal(train_ids_to_label_ids(train_ids), expected)
    np.testing.assert_array_equal(train_ids_to_label_ids(np.arange(14, 19)), [27, 28, 31, 32, 33])
    with pytest.raises(SeglabError, match="train id 19 is not a Cityscapes class"):
        train_ids_to_label_ids(np.array([19]))


def test_cityscapes_check_rejects_a_value_that_is_no_label_id(tmp_path):
    root = cityscapes_tree(tmp_path)
    write_label_mask(
        root / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png", tile([7, 34])
    )
    with pytest.raises(SeglabError) as error:
        check_dataset(build_dataset("cityscapes", root, "val"), progress=False)
    assert "mask value 34 is not a cityscapes label (valid: 0..33)" in _one_line(error)


def test_cityscapes_without_gtfine_names_the_missing_folder(tmp_path):
    write_image(tmp_path / "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png")
    with pytest.raises(SeglabError) as error:
        build_dataset("cityscapes", tmp_path, "train")
    message = _one_line(error)
    assert "gtFine/train is missing" in message and "cityscapes" in message


# ---------------------------------------------------------------------------- CamVid
def test_camvid_segnet_layout_maps_void_11_to_ignore(tmp_path):
    root = camvid_tree(tmp_path)
    sets = {split: build_dataset("camvid", root, split) for split in ("train", "val", "test")}
    assert [len(d) for d in sets.values()] == [3, 2, 1]
    train = sets["train"]
    assert train.num_classes == 11 and train.classes.names[4] == "pavement"
    mask = train.load(1)[1]
    np.testing.assert_array_equal(mask[0, :5], [0, 10, 255, 3, 1])
    assert mask.shape == (36, 48)
    assert dataset_summary(train) == (
        "train: 3 images (release: 367), 11 classes, image sizes WxH: 48x36 (3)"
    )
    check_dataset(train, progress=False)


def test_camvid_missing_annotation_folder_is_one_line(tmp_path):
    write_image(tmp_path / "train" / "a.png")
    with pytest.raises(SeglabError) as error:
        build_dataset("camvid", tmp_path, "train")
    assert "trainannot is missing: not a camvid release layout" in _one_line(error)


# ---------------------------------------------------------------------------- ADE20K
def test_ade20k_shifts_labels_down_and_ignores_other(tmp_path):
    root = ade_tree(tmp_path)
    train = build_dataset("ade20k", root, "train")
    assert len(train) == 2 and train.num_classes == 150
    assert train.classes.names[:3] == ["wall", "building", "sky"]
    assert train.classes.names[149] == "flag"
    np.testing.assert_array_equal(train.load(0)[1], tile([255, 0, 1, 149]) | _zero_is(255))
    np.testing.assert_array_equal(train.load(1)[1], tile([12, 255, 255, 99]) | _zero_is(255))
    assert len(build_dataset("ade20k", root, "validation")) == 1
    assert len(build_dataset("ade20k", tmp_path, "val")) == 1  # the parent folder works too
    assert dataset_splits("ade20k", root) == ["train", "val"]
    check_dataset(train, progress=False)


def _zero_is(value: int) -> np.ndarray:
    """tile pads with raw 0 ("other"), which ADE20K maps to 255: the padded columns."""
    padding = np.zeros((H, W), np.uint8)
    padding[:, 4:] = value
    return padding


def test_ade20k_check_rejects_label_151(tmp_path):
    root = ade_tree(tmp_path)
    write_label_mask(root / "annotations/validation/ADE_val_00000001.png", tile([151]))
    with pytest.raises(SeglabError) as error:
        check_dataset(build_dataset("ade20k", root, "val"), progress=False)
    assert "mask value 151 is not a ade20k label (valid: 0..150)" in _one_line(error)


def test_ade20k_missing_annotations_is_one_line(tmp_path):
    write_image(tmp_path / "images/training/ADE_train_00000001.jpg")
    with pytest.raises(SeglabError) as error:
        build_dataset("ade20k", tmp_path, "train")
    assert "annotations/training is missing" in _one_line(error)


# ---------------------------------------------------------------------------- shared
def test_every_format_is_registered_and_unknown_formats_list_them():
    assert set(DATASETS) >= {"folder", "voc", "cityscapes", "camvid", "ade20k"}
    with pytest.raises(SeglabError, match=", ".join(sorted(DATASETS))) as error:
        build_dataset("kitti", ".", "train")
    assert _one_line(error).startswith("data.format 'kitti' is not one of: ade20k, camvid, ")


def test_release_datasets_cache_and_seeded_transforms_like_folder(tmp_path):
    root = camvid_tree(tmp_path)
    transform = train_transform([24, 24], [0.5, 1.5], True)
    dataset = build_dataset("camvid", root, "train", transform, cache=True)
    first, second = dataset[(1, 1234)], dataset[(1, 1234)]
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert first[0].shape == (3, 24, 24) and first[1].dtype == torch.int64
    assert dataset.load(0) is dataset.load(0)  # cached


def test_written_palette_masks_read_back_as_ids(tmp_path):
    """The fixtures' palette PNGs hold ids as pixel values, as VOC's do."""
    values = tile([0, 1, 20, 255])
    write_label_mask(tmp_path / "m.png", values, palette=True)
    assert Image.open(tmp_path / "m.png").mode == "P"
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), values)


def test_summary_and_splits_work_for_the_generic_folder_layout(shapes_root):
    assert dataset_splits("folder", shapes_root) == ["train", "val"]
    val = build_dataset("folder", shapes_root, "val")
    assert dataset_summary(val) == "val: 8 images, 6 classes, image sizes WxH: 32x32 (8)"


# ---------------------------------------------------------------------------- the registry
def test_every_dataset_class_in_seglab_data_is_registered():
    """Every FolderDataset subclass defined in any module of seglab.data (and FolderDataset
    itself) is registered under its format_name; ReleaseDataset is their abstract base."""
    import importlib
    import inspect
    import pkgutil

    import seglab.data
    from seglab.data.folder import FolderDataset
    from seglab.data.release import ReleaseDataset

    registered = {info.cls for info in DATASETS.values()}
    for module_info in pkgutil.iter_modules(seglab.data.__path__):
        module = importlib.import_module(f"seglab.data.{module_info.name}")
        for _, cls in inspect.getmembers(module, inspect.isclass):
            defined_here = cls.__module__ == module.__name__
            # A class may stay out only by saying why in its own body (registry_exempt).
            exempt = "registry_exempt" in vars(cls)
            dataset = issubclass(cls, FolderDataset) and cls is not ReleaseDataset
            if defined_here and dataset and not exempt:
                assert cls in registered, f"{cls.__name__} in {module.__name__} is not registered"
    for name, info in DATASETS.items():
        assert info.cls.format_name == name


def test_register_dataset_refuses_a_second_name_and_a_mismatched_format_name():
    from seglab.data.registry import register_dataset

    with pytest.raises(ValueError, match="registered twice"):
        register_dataset("voc", "again")(type("Again", (), {}))
    with pytest.raises(ValueError, match="format_name is 'b', registered as 'a_new_format'"):
        register_dataset("a_new_format", "x")(type("Mismatch", (), {"format_name": "b"}))
    assert "a_new_format" not in DATASETS


def test_help_lines_and_the_readme_table_read_the_registry():
    from seglab.data import dataset_formats, format_help_lines
    from seglab.data.registry import formats_markdown_table

    lines = format_help_lines()
    assert [line.split(":")[0] for line in lines] == sorted(DATASETS)
    assert lines[-1] == f"voc: {dataset_formats()['voc']}"
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert formats_markdown_table() in readme


def test_an_unknown_format_fails_when_the_config_is_loaded(tmp_path):
    from seglab.config import load_config

    path = tmp_path / "run.yaml"
    path.write_text("data: {format: kitti}\n")
    with pytest.raises(SeglabError) as error:
        load_config(path)
    assert _one_line(error) == (
        f"{path}: data.format 'kitti' is not one of: {', '.join(sorted(DATASETS))}"
    )
    with pytest.raises(SeglabError, match="data.format 'VOC' is not one of"):
        load_config(None, ["data.format=VOC"])
