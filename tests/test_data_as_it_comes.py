"""Data as annotation tools export it (issue 18.1): colour-coded RGB masks through classes.txt
colours, configurable folders and suffixes, data.val_fraction, config-relative paths, and the
fixes `seglab data check` suggests."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image
from release_trees import voc_tree

from seglab.cli import main
from seglab.config import load_config
from seglab.data import FolderDataset
from seglab.data.folder_layout import FolderLayout
from seglab.engine.run_setup import build_datasets
from seglab.errors import SeglabError

COLOURS = {"background": (0, 0, 0), "road": (128, 64, 128), "car": (0, 0, 142)}


def write_tree(root, names=("a", "b"), mask_dir="masks", mask_suffix=".png", rgb=True,
               colours=True, image_suffix=".jpg"):  # fmt: skip
    """2 x 3 images; mask row 0 = background, road, car; row 1 = car, ignore colour, road."""
    (root / "images").mkdir(parents=True)
    (root / mask_dir).mkdir(parents=True, exist_ok=True)
    lines = [f"{n} #{r:02x}{g:02x}{b:02x}" if colours else n for n, (r, g, b) in COLOURS.items()]
    (root / "classes.txt").write_text("\n".join(lines) + "\n")
    bg, road, car, ignore = (0, 0, 0), (128, 64, 128), (0, 0, 142), (224, 224, 192)
    pixels = np.array([[bg, road, car], [car, ignore, road]], np.uint8)
    for name in names:
        Image.new("RGB", (3, 2), (90, 90, 90)).save(root / "images" / f"{name}{image_suffix}")
        mask = Image.fromarray(pixels) if rgb else Image.fromarray(np.zeros((2, 3), np.uint8))
        mask.save(root / mask_dir / f"{name}{mask_suffix}")
    return root


def test_rgb_masks_are_read_through_class_colours(tmp_path):
    dataset = FolderDataset(write_tree(tmp_path / "d"), "all")
    _, mask = dataset.load(0)
    # background 0, road 1, car 2 by classes.txt line; the VOC ignore colour -> 255
    assert mask.tolist() == [[0, 1, 2], [2, 255, 1]]
    dataset.check(0)


def test_an_unknown_colour_names_file_colour_and_pixel_count(tmp_path):
    root = write_tree(tmp_path / "d")
    pixels = np.zeros((2, 3, 3), np.uint8)
    pixels[0, :2] = (255, 0, 0)  # 2 red pixels, 1 green: red is the one named
    pixels[1, 0] = (0, 255, 0)
    Image.fromarray(pixels).save(root / "masks" / "b.png")
    with pytest.raises(SeglabError) as error:
        FolderDataset(root, "all").load(1)
    text = str(error.value)
    assert "\n" not in text and str(root / "masks" / "b.png") in text
    assert "colour #ff0000 (255, 0, 0) on 2 pixels and 1 other unknown colours" in text


def test_rgb_masks_without_colours_are_refused_with_the_fix(tmp_path):
    root = write_tree(tmp_path / "d", colours=False)
    with pytest.raises(SeglabError, match="give every class its colour in the dataset's classes"):
        FolderDataset(root, "all").load(0)


def test_configured_folders_and_suffixes(tmp_path):
    # MMSegmentation-style: images/NAME.jpg, labels/NAME_mask.png
    root = write_tree(tmp_path / "d", mask_dir="labels", mask_suffix="_mask.png")
    (root / "train.txt").write_text("a\n")
    (root / "val.txt").write_text("b\n")
    cfg = load_config(None, [f"data.root={root}", "data.mask_dir=labels",
                             "data.mask_suffix=_mask.png", "data.image_suffix=.jpg"])  # fmt: skip
    train_set, val_set = build_datasets(cfg, check=True, progress=False)
    assert train_set.mask_path(0) == root / "labels" / "a_mask.png"
    assert val_set.image_path(0) == root / "images" / "b.jpg"
    with pytest.raises(SeglabError, match="data.mask_dir applies to data.format folder only"):
        build_datasets(load_config(None, ["data.format=voc", "data.mask_dir=x"]), check=False)


def test_masks_beside_images_are_not_images(tmp_path):
    root = write_tree(tmp_path / "d", mask_dir="images", mask_suffix="_mask.png")
    layout = FolderLayout(mask_dir="images", mask_suffix="_mask.png")
    assert FolderDataset(root, "all", layout=layout).names == ["a", "b"]


def test_val_fraction_is_a_fixed_hash_order_split(tmp_path):
    names = [f"img{i:02d}" for i in range(10)]
    root = write_tree(tmp_path / "d", names=names)
    layout = FolderLayout(val_fraction=0.3)
    val = FolderDataset(root, "val", layout=layout).names
    train = FolderDataset(root, "train", layout=layout).names
    # by hand: the 3 names (round(0.3 * 10)) whose SHA-1 hex digests sort first are val
    expected = sorted(sorted(names, key=lambda n: hashlib.sha1(n.encode()).hexdigest())[:3])
    assert val == expected and sorted(train + val) == names and not set(train) & set(val)
    (root / "val.txt").write_text("img00\n")  # a split file wins
    assert FolderDataset(root, "val", layout=layout).names == ["img00"]
    with pytest.raises(SeglabError, match="strictly between 0 and 1"):
        FolderLayout(val_fraction=1.0)


def test_config_paths_resolve_beside_the_config(tmp_path, monkeypatch):
    project = tmp_path / "project"
    write_tree(project / "data")
    (project / "unet.yaml").write_text("data: {root: data, val_fraction: 0.5}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(project / "unet.yaml")
    assert cfg.data.root == str(project / "data")
    train_set, val_set = build_datasets(cfg, check=True, progress=False)
    assert len(train_set) == len(val_set) == 1
    # nothing beside the config: kept as written (the current directory's), named absolutely
    (project / "missing.yaml").write_text("data: {root: nowhere}\n")
    cfg = load_config(project / "missing.yaml")
    with pytest.raises(SeglabError) as error:
        build_datasets(cfg, check=False)
    assert f"dataset folder {elsewhere / 'nowhere'} does not exist" in str(error.value)
    assert "seglab data shapes" not in str(error.value)
    with pytest.raises(SeglabError, match="generate it with `seglab data shapes data/shapes`"):
        FolderDataset("data/shapes")


def check(capsys, *argv):
    status = main(["--quiet", "data", "check", *map(str, argv)])
    return status, capsys.readouterr()


def test_data_check_suggests_the_format_of_a_release_tree(tmp_path, capsys):
    root = voc_tree(tmp_path)
    status, out = check(capsys, root)
    assert status == 2 and "looks like a voc tree: use --format voc (data.format: voc)" in out.err


def test_data_check_suggests_mask_folder_and_suffix(tmp_path, capsys):
    root = write_tree(tmp_path / "d", mask_dir="labels", mask_suffix="_mask.png")
    status, out = check(capsys, root)
    assert status == 2
    assert "--mask-dir labels --mask-suffix _mask.png" in out.err
    assert "data.mask_dir: labels, data.mask_suffix: _mask.png" in out.err
    status, out = check(capsys, root, "--mask-dir", "labels", "--mask-suffix", "_mask.png")
    assert status == 0 and "all readable" in out.out
    status, out = check(capsys, root, "--mask-dir=labels", "--mask-suffix=_mask.png",
                        "--val-fraction", "0.5")  # fmt: skip
    assert status == 0 and out.out.count("all readable") == 2  # train and val
