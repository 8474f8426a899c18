"""The folder dataset, the shapes generator, and one-line errors for every bad-input case."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from seglab.data import FolderDataset, check_dataset, read_classes_file, write_shapes_dataset
from seglab.data.folder import write_mask
from seglab.data.shapes import SHAPE_CLASSES, render_scene
from seglab.errors import SeglabError


@pytest.fixture
def dataset_copy(shapes_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(shapes_root, root)
    return root


def test_shapes_dataset_is_deterministic_and_complete(tmp_path):
    a = write_shapes_dataset(tmp_path / "a", train=3, val=2, size=24, seed=7)
    b = write_shapes_dataset(tmp_path / "b", train=3, val=2, size=24, seed=7)
    for name in ("train_00002", "val_00001"):
        for folder in ("images", "masks"):
            assert np.array_equal(
                np.array(Image.open(a / folder / f"{name}.png")),
                np.array(Image.open(b / folder / f"{name}.png")),
            )
    assert (a / "train.txt").read_text().split() == ["train_00000", "train_00001", "train_00002"]
    assert read_classes_file(a / "classes.txt").names == list(SHAPE_CLASSES)
    assert Image.open(a / "masks" / "train_00000.png").mode == "P"  # palette PNG


def test_shapes_use_every_class_and_colour_does_not_identify_the_class():
    rng = np.random.default_rng(0)
    colours = {label: [] for label in range(1, len(SHAPE_CLASSES))}
    for _ in range(200):
        image, labels = render_scene(rng, 48)
        for label in colours:
            if (labels == label).any():
                colours[label].append(image[labels == label].mean(axis=0))
    for label, means in colours.items():
        assert len(means) > 20, f"class {SHAPE_CLASSES[label]} is rare"
        # Object colours are drawn uniformly: every class spans most of the colour cube.
        assert np.ptp(np.array(means), axis=0).min() > 150


def test_dataset_reads_images_and_masks(shapes_root):
    dataset = FolderDataset(shapes_root, "val")
    image, mask = dataset[0]
    assert image.shape == (3, 32, 32) and mask.shape == (32, 32)
    assert len(dataset) == 8 and dataset.num_classes == 6
    check_dataset(dataset, progress=False)


def test_seeded_keys_give_the_same_augmentation(shapes_root):
    from seglab.data.transforms import train_transform

    dataset = FolderDataset(shapes_root, "train", train_transform([20, 20], [0.5, 1.5], True))
    a, b, c = dataset[(3, 11)], dataset[(3, 11)], dataset[(3, 12)]
    assert (a[0] == b[0]).all() and (a[1] == b[1]).all()
    assert not (a[0].shape == c[0].shape and (a[0] == c[0]).all())


def test_corrupt_image_is_one_line_naming_the_file(dataset_copy):
    bad = dataset_copy / "images" / "train_00003.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(SeglabError, match=r"train_00003\.png: cannot read image") as error:
        check_dataset(FolderDataset(dataset_copy, "train"), progress=False)
    assert "\n" not in str(error.value)


def test_missing_mask_names_the_file(dataset_copy):
    (dataset_copy / "masks" / "train_00005.png").unlink()
    with pytest.raises(SeglabError, match=r"train_00005\.png: mask file not found"):
        check_dataset(FolderDataset(dataset_copy, "train"), progress=False)


def test_mask_of_the_wrong_size_names_the_file_and_both_sizes(dataset_copy):
    write_mask(
        np.zeros((10, 12), np.uint8), dataset_copy / "masks" / "train_00001.png", [(0, 0, 0)]
    )
    with pytest.raises(
        SeglabError, match=r"train_00001\.png: mask is 12x10 but its image is 32x32"
    ):
        check_dataset(FolderDataset(dataset_copy, "train"), progress=False)


def test_label_out_of_range_names_the_file_and_value(dataset_copy):
    labels = np.zeros((32, 32), np.uint8)
    labels[3, 4] = 9  # 6 classes; 255 elsewhere would be fine
    labels[5, 5] = 255
    write_mask(labels, dataset_copy / "masks" / "val_00002.png", [(0, 0, 0)])
    with pytest.raises(SeglabError, match=r"val_00002\.png: label value 9 is outside the 6"):
        check_dataset(FolderDataset(dataset_copy, "val"), progress=False)


def test_image_listed_in_split_but_missing(dataset_copy):
    (dataset_copy / "images" / "val_00004.png").unlink()
    with pytest.raises(SeglabError, match=r"val_00004.*no image for 'val_00004'"):
        check_dataset(FolderDataset(dataset_copy, "val"), progress=False)


def test_rgb_mask_is_rejected_with_the_fix(dataset_copy):
    # shapes' classes.txt gives every class a colour, so RGB masks are read through them
    # (tests/test_data_as_it_comes.py); a colour of no class is refused, and without colours
    # in classes.txt any RGB mask is
    Image.new("RGB", (32, 32), (1, 2, 3)).save(dataset_copy / "masks" / "val_00000.png")
    with pytest.raises(SeglabError, match="colour #010203 .* on 1024 pixels is no class's"):
        check_dataset(FolderDataset(dataset_copy, "val"), progress=False)
    classes = dataset_copy / "classes.txt"
    classes.write_text(
        "".join(line.split()[0] + "\n" for line in classes.read_text().split("\n") if line)
    )
    with pytest.raises(SeglabError, match="holds colours, not label ids; to read colour-coded"):
        check_dataset(FolderDataset(dataset_copy, "val"), progress=False)


def test_missing_split_file_and_classes_file(dataset_copy):
    with pytest.raises(SeglabError, match=r"test\.txt is missing"):
        FolderDataset(dataset_copy, "test")
    (dataset_copy / "classes.txt").unlink()
    with pytest.raises(SeglabError, match=r"classes\.txt is missing"):
        FolderDataset(dataset_copy, "val")


def test_classes_file_accepts_names_with_spaces_and_no_colour(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("background #000000\npotted plant #808000\nsky\n")
    classes = read_classes_file(path)
    assert classes.names == ["background", "potted plant", "sky"]
    assert classes.colors[1] == (128, 128, 0)
    assert classes.colors[2] == (0, 128, 0)  # VOC palette entry 2
