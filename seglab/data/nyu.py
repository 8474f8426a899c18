"""NYU Depth v2, the labelled release (Silberman et al., ECCV 2012), with the 40-class labels
and the standard 795/654 train/test split of Gupta et al. (CVPR 2013), as ACNet and RedNet use.

    ROOT/nyu_depth_v2_labeled.mat   the release: images, depths (metres), 894-class labels
    ROOT/labels40.mat               Gupta et al.'s `labels40` (H, W, 1449), 0 = void
    ROOT/splits.mat                 `trainNdxs` (795) and `testNdxs` (654), 1-based

The .mat release is MATLAB v7.3 (HDF5, read with h5py) and is read once: the first use writes
ROOT/nyu40/ in the folder layout (images/, masks/ with void as 255, depth/ in millimetres,
depth.txt, classes.txt, train.txt, test.txt), which every later run reads like any folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from seglab.data.depth import write_depth, write_depth_description
from seglab.data.folder import FolderDataset, write_classes_file, write_mask
from seglab.data.labels import IGNORE_INDEX, default_palette
from seglab.data.registry import register_dataset
from seglab.errors import SeglabError

NYU40_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor mat", "clothes", "ceiling", "books", "refridgerator", "television", "paper", "towel",
    "shower curtain", "box", "whiteboard", "person", "night stand", "toilet", "sink", "lamp",
    "bathtub", "bag", "otherstructure", "otherfurniture", "otherprop",
)  # fmt: skip
RELEASE, LABELS40, SPLITS, FOLDER = (
    "nyu_depth_v2_labeled.mat",
    "labels40.mat",
    "splits.mat",
    "nyu40",
)


def _read_mat(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Arrays of a .mat file in MATLAB's axis order (H, W, ..., N): v7.3 (HDF5) through h5py,
    older versions through scipy."""
    if not path.is_file():
        raise SeglabError(f"{path} is missing; see seglab/data/nyu.py for the three files needed")
    with path.open("rb") as f:
        head = f.read(520)
    hdf5 = b"\x89HDF\r\n\x1a\n" in (head[:8], head[512:520])  # v7.3: a 512-byte user block
    if hdf5:
        try:
            import h5py
        except ImportError:
            raise SeglabError(
                f"{path} is MATLAB v7.3 (HDF5): install h5py (`pip install 'seglab[rgbd]'`)"
            ) from None
        with h5py.File(path, "r") as mat:
            return {k: np.asarray(mat[k]).T for k in keys}  # h5py sees MATLAB's axes reversed
    from scipy.io import loadmat

    mat = loadmat(path)
    missing = [k for k in keys if k not in mat]
    if missing:
        raise SeglabError(f"{path} has no variable {missing[0]!r}")
    return {k: mat[k] for k in keys}


def extract_nyu_depth_v2(root: Path, out: Path) -> Path:
    """Write the folder layout of the labelled release at `root` into `out` (see above)."""
    release = _read_mat(root / RELEASE, ("images", "depths"))
    labels = _read_mat(root / LABELS40, ("labels40",))["labels40"]
    splits = _read_mat(root / SPLITS, ("trainNdxs", "testNdxs"))
    images, depths = release["images"], release["depths"]  # (H, W, 3, N) uint8, (H, W, N) m
    if not images.shape[-1] == depths.shape[-1] == labels.shape[-1]:
        raise SeglabError(f"{root}: {RELEASE} and {LABELS40} hold different image counts")
    for folder in ("images", "masks", "depth"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    colors = default_palette(len(NYU40_CLASSES))
    write_classes_file(out / "classes.txt", NYU40_CLASSES, colors)
    write_depth_description(out, 0.001)
    for i in range(images.shape[-1]):
        name = f"{i + 1:04d}"  # MATLAB's 1-based index, as the split lists
        Image.fromarray(np.ascontiguousarray(images[..., i])).save(out / "images" / f"{name}.png")
        ids = labels[..., i].astype(np.int64) - 1  # 1..40 -> 0..39, void 0 -> -1
        write_mask(np.where(ids < 0, IGNORE_INDEX, ids), out / "masks" / f"{name}.png", colors)
        write_depth(depths[..., i], out / "depth" / f"{name}.png", 0.001)
    for split, key in (("train", "trainNdxs"), ("test", "testNdxs")):
        numbers = np.asarray(splits[key]).astype(int).ravel()
        (out / f"{split}.txt").write_text("".join(f"{n:04d}\n" for n in numbers))
    return out


@register_dataset(
    "nyudv2",
    "NYU Depth v2 labelled .mat + Gupta's labels40.mat and splits.mat (40 classes, RGB-D, "
    "train 795 / test 654), converted once to ROOT/nyu40/",
)
class NYUDepthV2(FolderDataset):
    """NYU Depth v2 at 40 classes, RGB-D (inputs ("image", "depth")); splits train and test."""

    def __init__(self, root, split: str = "train", transform=None, cache: bool = False):
        root = Path(root)
        folder = root / FOLDER
        if not (folder / "test.txt").is_file():  # test.txt is written last
            extract_nyu_depth_v2(root, folder)
        super().__init__(folder, split, transform, cache)
