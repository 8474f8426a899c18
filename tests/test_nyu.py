"""NYU Depth v2 reader on tiny .mat files written here (v5 via scipy, v7.3 via h5py)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.io import savemat

from seglab.data import build_dataset
from seglab.data.nyu import NYU40_CLASSES


def write_release(root, hdf5: bool) -> np.ndarray:
    """Three 4x6 RGB-D images: labels40 1..40 with 0 void, image 2 in test."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 6, 3, 3), dtype=np.uint8)  # MATLAB (H, W, 3, N)
    depths = np.stack([np.full((4, 6), 1.5 * (i + 1), np.float32) for i in range(3)], -1)
    labels = np.zeros((4, 6, 3), np.uint16)
    labels[0, 0, 0], labels[1, 2, 0], labels[3, 5, 2] = 1, 40, 7
    if hdf5:
        import h5py

        with h5py.File(root / "nyu_depth_v2_labeled.mat", "w") as f:  # h5py: axes reversed
            f["images"], f["depths"] = images.T, depths.T
    else:
        savemat(root / "nyu_depth_v2_labeled.mat", {"images": images, "depths": depths})
    savemat(root / "labels40.mat", {"labels40": labels})
    savemat(root / "splits.mat", {"trainNdxs": np.array([[1], [3]]), "testNdxs": np.array([[2]])})
    return images


@pytest.mark.parametrize("hdf5", [False, True])
def test_nyu_reader_gives_40_classes_void_ignored_depth_in_metres(tmp_path, hdf5):
    if hdf5:
        pytest.importorskip("h5py")
    images = write_release(tmp_path, hdf5)
    train = build_dataset("nyudv2", tmp_path, "train")
    test = build_dataset("nyudv2", tmp_path, "test")
    assert len(train) == 2 and len(test) == 1 and train.num_classes == 40 == len(NYU40_CLASSES)
    assert train.inputs == ("image", "depth")
    image, mask = train.load(0)
    assert np.array_equal(image, images[..., 0])
    assert mask[0, 0] == 0 and mask[1, 2] == 39 and mask[2, 2] == 255  # 1 -> 0, 40 -> 39, void
    assert train.load(1)[1][3, 5] == 6
    assert np.allclose(test.load_depth(0), 3.0)  # image 2: 2 x 1.5 m
    assert train.classes.names[0] == "wall" and train.classes.names[-1] == "otherprop"
    x, y = train[0]
    assert x.shape == (4, 4, 6) and y.shape == (4, 6)
