"""NYU Depth v2 reader on tiny .mat files written here (v5 via scipy, v7.3 via h5py)."""

from __future__ import annotations

import numpy as np
import pytest
from release_trees import nyu_tree

from seglab.data import build_dataset
from seglab.data.nyu import NYU40_CLASSES


@pytest.mark.parametrize("hdf5", [False, True])
def test_nyu_reader_gives_40_classes_void_ignored_depth_in_metres(tmp_path, hdf5):
    if hdf5:
        pytest.importorskip("h5py")
    images = nyu_tree(tmp_path, hdf5)
    train = build_dataset("nyudv2", tmp_path, "train")
    test = build_dataset("nyudv2", tmp_path, "test")
    assert len(train) == 2 and len(test) == 1 and train.num_classes == 40 == len(NYU40_CLASSES)
    assert train.inputs == ("image", "depth")
    image, mask = train.load(0)
    assert np.array_equal(image, images[..., 0])
    assert mask[0, 0] == 0 and mask[1, 2] == 39 and mask[2, 2] == 255  # 1 -> 0, 40 -> 39, void
    assert train.load(1)[1][3, 5] == 6
    assert np.allclose(test.load_depth(0), 3.0)  # image 2: 2 x 1.5 m
    assert test.load(0)[1][2, 3] == 11  # 12 -> 11
    assert train.classes.names[0] == "wall" and train.classes.names[-1] == "otherprop"
    x, y = train[0]
    assert x.shape == (4, 4, 6) and y.shape == (4, 6)
