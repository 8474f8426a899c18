"""SUN RGB-D reader on a tiny release tree written here (release_trees.sunrgbd_tree)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from release_trees import SUN_SCENES, sunrgbd_tree

from seglab.data import build_dataset, check_dataset
from seglab.data.sunrgbd import SUN37_CLASSES, decode_sunrgbd_depth
from seglab.errors import SeglabError


def test_depth_decoding_is_the_toolboxs_3_bit_rotation():
    # bitor(bitshift(d, -3), bitshift(d, 13)) by hand: 12000 = 0b0010_1110_1110_0000
    # -> 1500 (d >> 3) | 0 (its low 3 bits are 0); 8 -> 1; 1 (bit 0) -> 2^13 = 8192; 0 -> 0
    stored = np.array([[12000, 8, 1, 0]], np.uint16)
    assert decode_sunrgbd_depth(stored).tolist() == [[1500, 1, 8192, 0]]


@pytest.mark.parametrize("labels", ["npy", "seg2d"])
def test_reader_gives_37_classes_void_ignored_and_depth_in_metres(tmp_path, labels):
    if labels == "seg2d":
        pytest.importorskip("h5py")
    sunrgbd_tree(tmp_path, labels)
    train = build_dataset("sunrgbd", tmp_path, "train")
    test = build_dataset("sunrgbd", tmp_path, "test")
    assert (len(train), len(test)) == (2, 1)  # allsplit: scenes 2, 3 train; scene 1 test
    assert train.num_classes == 37 == len(SUN37_CLASSES) and train.inputs == ("image", "depth")
    assert train.classes.names[0] == "wall" and train.classes.names[-1] == "bag"
    check_dataset(train, progress=False)
    check_dataset(test, progress=False)
    # test image = scene 1 (meta index 1): raw row 0 [0, 1, 37, 5] -> [255, 0, 36, 4]
    image, mask = test.load(0)
    assert mask[0, :4].tolist() == [255, 0, 36, 4] and (mask[1:] == 255).all()
    first = tmp_path / "SUNRGBD" / next(iter(SUN_SCENES)) / "image" / "0000000.jpg"
    assert np.array_equal(image, np.asarray(Image.open(first).convert("RGB")))
    depth = test.load_depth(0)
    assert np.allclose(depth[0], 1.5) and np.allclose(depth[1], 9.0)  # 9 m: not stored / 8
    # train: scenes 2 (5x7, 2.5 m, [12, 0, 0, 2]) and 3 (4x6, 3.5 m, [37, 37, 1, 0])
    assert train.names == ["00002", "00003"]
    assert train.load(0)[1][0, :4].tolist() == [11, 255, 255, 1]
    assert train.load(1)[1][0, :4].tolist() == [36, 36, 0, 255]
    assert np.allclose(train.load_depth(0), 2.5) and train.load_depth(0).shape == (5, 7)
    x, y = train[1]
    assert x.shape == (4, 4, 6) and y.shape == (4, 6)


def test_bad_files_are_one_line_errors_naming_them(tmp_path):
    sunrgbd_tree(tmp_path)
    scene = tmp_path / "SUNRGBD" / list(SUN_SCENES)[1]
    label = scene / "label" / "label.npy"
    raw = np.load(label)
    np.save(label, np.where(raw == 12, 38, raw))
    with pytest.raises(SeglabError, match=r"label\.npy: label value 38 is outside 0\.\.37") as e:
        build_dataset("sunrgbd", tmp_path, "train")
    assert "\n" not in str(e.value)
    np.save(label, raw)
    depth = scene / "depth_bfx" / "0000001.png"
    Image.fromarray(np.zeros((5, 7), np.uint8)).save(depth)
    with pytest.raises(SeglabError, match=r"0000001\.png: depth must be a 16-bit one-channel"):
        build_dataset("sunrgbd", tmp_path, "train")
    depth.unlink()
    with pytest.raises(SeglabError, match=r"depth_bfx/0000001\.png: depth file missing"):
        build_dataset("sunrgbd", tmp_path, "train")
    with pytest.raises(SeglabError, match="SUNRGBD is missing"):
        build_dataset("sunrgbd", tmp_path / "elsewhere", "train")
