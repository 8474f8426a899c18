"""Tiny trees of the standard releases in their own layouts (VOC + SBD, Cityscapes, CamVid,
ADE20K), shared by test_datasets.py (label mappings) and test_configs.py (every recipe reads
its dataset). Sizes are tiny: H x W = 6 x 8 unless given."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from seglab.data.folder import write_mask

H, W = 6, 8


def write_image(path: Path, seed: int = 0, size: tuple[int, int] = (H, W)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def write_label_mask(path: Path, values: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if palette:
        write_mask(values, path, [(i, i, i) for i in range(21)])
    else:
        Image.fromarray(values.astype(np.uint8), mode="L").save(path)


def tile(values: list[int]) -> np.ndarray:
    """An (H, W) mask whose first row holds `values` (then zero-padded), rest copies of it."""
    row = np.zeros(W, np.uint8)
    row[: len(values)] = values
    return np.tile(row, (H, 1))


VOC_MASKS = {
    "2007_000001": [0, 1, 20, 255],
    "2007_000002": [15, 15, 0, 255],
    "2007_000003": [7, 0, 0, 0],
}


def voc_tree(tmp_path: Path) -> Path:
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    for seed, (name, values) in enumerate(VOC_MASKS.items()):
        write_image(voc / "JPEGImages" / f"{name}.jpg", seed)
        write_label_mask(voc / "SegmentationClass" / f"{name}.png", tile(values), palette=True)
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("2007_000001\n2007_000002\n")
    (sets / "val.txt").write_text("2007_000003\n")
    (sets / "trainval.txt").write_text("2007_000001\n2007_000002\n2007_000003\n")
    return tmp_path


def sbd_tree(tmp_path: Path, voc_image_dir: Path) -> Path:
    """SBD's layout: benchmark_RELEASE/dataset/{cls/*.mat, img/*.jpg, train.txt, val.txt}."""
    import scipy.io
    import scipy.sparse

    dataset = tmp_path / "sbd" / "benchmark_RELEASE" / "dataset"
    (dataset / "cls").mkdir(parents=True)
    sbd_masks = {
        "2007_000003": [1, 1, 1, 1],  # in VOC val: must be left out of train_aug
        "2008_000010": [0, 3, 3, 12],  # only in SBD: its .mat becomes the mask
        "2008_000011": [19, 0, 2, 2],
        "2007_000001": [9, 9, 9, 9],  # also annotated by VOC: VOC's mask wins
    }
    boundaries = np.empty((20, 1), dtype=object)  # a cell of 20 sparse per-class edge maps
    for c in range(20):
        boundaries[c, 0] = scipy.sparse.csr_matrix((H, W), dtype=np.uint8)
    for seed, (name, values) in enumerate(sbd_masks.items()):
        gt = {
            "Segmentation": tile(values),
            "Boundaries": boundaries,
            "CategoriesPresent": np.array(sorted({v for v in values if v})),
        }
        scipy.io.savemat(dataset / "cls" / f"{name}.mat", {"GTcls": gt})
        write_image(dataset / "img" / f"{name}.jpg", 10 + seed)
    (dataset / "train.txt").write_text("2007_000003\n2008_000010\n2007_000001\n")
    (dataset / "val.txt").write_text("2008_000011\n")
    return tmp_path / "sbd"


def cityscapes_tree(tmp_path: Path) -> Path:
    frames = {
        ("train", "aachen", "aachen_000000_000019"): [0, 7, 8, 11, 24, 26, 33, 1],
        ("train", "aachen", "aachen_000001_000019"): [12, 13, 17, 19, 20, 21, 22, 23],
        ("train", "bochum", "bochum_000000_000313"): [25, 27, 28, 31, 32, 6, 9, 30],
        ("val", "lindau", "lindau_000000_000019"): [7, 7, 7, 7],
    }
    for seed, ((split, city, stem), values) in enumerate(frames.items()):
        write_image(tmp_path / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", seed)
        write_label_mask(
            tmp_path / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", tile(values)
        )
        # the release also ships colour, instance and polygon files beside the labelIds
        write_label_mask(
            tmp_path / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png", tile([0])
        )
    return tmp_path


def camvid_tree(tmp_path: Path, counts=(3, 2, 1)) -> Path:
    for split, count in zip(("train", "val", "test"), counts, strict=True):
        for i in range(count):
            name = f"0001TP_{i:06d}"
            write_image(tmp_path / split / f"{name}.png", i, size=(36, 48))
            values = np.full((36, 48), i % 11, np.uint8)
            values[0, :4] = [0, 10, 11, 3]
            write_label_mask(tmp_path / f"{split}annot" / f"{name}.png", values)
    return tmp_path


def ade_tree(tmp_path: Path) -> Path:
    root = tmp_path / "ADEChallengeData2016"
    masks = {
        ("training", "ADE_train_00000001"): [0, 1, 2, 150],
        ("training", "ADE_train_00000002"): [13, 0, 0, 100],
        ("validation", "ADE_val_00000001"): [5, 5, 5, 5],
    }
    for seed, ((split, name), values) in enumerate(masks.items()):
        write_image(root / "images" / split / f"{name}.jpg", seed)
        write_label_mask(root / "annotations" / split / f"{name}.png", tile(values))
    return root


PCONTEXT_MASKS = {  # raw values: 0 background, 1..59 the classes
    ("train", "2008_000002"): [0, 1, 59, 15],
    ("train", "2008_000003"): [37, 37, 0, 0],
    ("val", "2008_000007"): [59, 0, 0, 2],
}


def pcontext_tree(tmp_path: Path) -> Path:
    """VOCdevkit/VOC2010 as MMSegmentation's PASCAL-Context converter leaves it."""
    voc = tmp_path / "VOCdevkit" / "VOC2010"
    splits: dict[str, list[str]] = {}
    for seed, ((split, name), values) in enumerate(PCONTEXT_MASKS.items()):
        write_image(voc / "JPEGImages" / f"{name}.jpg", seed)
        write_label_mask(voc / "SegmentationClassContext" / f"{name}.png", tile(values))
        splits.setdefault(split, []).append(name)
    sets = voc / "ImageSets" / "SegmentationContext"
    sets.mkdir(parents=True)
    for split, names in splits.items():
        (sets / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    return tmp_path


def nyu_tree(root: Path, hdf5: bool = False) -> np.ndarray:
    """NYU Depth v2's labelled release at `root`: three 4x6 RGB-D images in
    nyu_depth_v2_labeled.mat (v5 via scipy, or v7.3 via h5py), Gupta's labels40.mat (1..40,
    0 void) and splits.mat (image 2 in test). Returns the images, MATLAB (H, W, 3, N)."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 6, 3, 3), dtype=np.uint8)  # MATLAB (H, W, 3, N)
    depths = np.stack([np.full((4, 6), 1.5 * (i + 1), np.float32) for i in range(3)], -1)
    labels = np.zeros((4, 6, 3), np.uint16)
    labels[0, 0, 0], labels[1, 2, 0], labels[3, 5, 2] = 1, 40, 7
    labels[2, 3, 1] = 12  # the test image holds a class too, not only void
    if hdf5:
        import h5py

        with h5py.File(root / "nyu_depth_v2_labeled.mat", "w") as f:  # h5py: axes reversed
            f["images"], f["depths"] = images.T, depths.T
    else:
        scipy.io.savemat(root / "nyu_depth_v2_labeled.mat", {"images": images, "depths": depths})
    scipy.io.savemat(root / "labels40.mat", {"labels40": labels})
    scipy.io.savemat(
        root / "splits.mat", {"trainNdxs": np.array([[1], [3]]), "testNdxs": np.array([[2]])}
    )
    return images


def coco_tree(root: Path) -> Path:
    """COCO 2017's layout: annotations/instances_{train,val}2017.json beside train2017/ and
    val2017/; one image per split holding one polygon object of category 1 (of ids 1, 2)."""
    import json

    for split in ("train2017", "val2017"):
        write_image(root / split / "000000000001.jpg")
        data = {
            "images": [{"id": 1, "file_name": "000000000001.jpg", "height": H, "width": W}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 3], "area": 12,
                 "segmentation": [[1, 1, 5, 1, 5, 4, 1, 4]], "iscrowd": 0}
            ],
            "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}],
        }  # fmt: skip
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


SUN_SCENES = {  # scene folder under SUNRGBD/ -> (split, image H x W, raw labels of row 0)
    "kv1/NYUdata/NYU0001": ("test", (4, 6), [0, 1, 37, 5]),
    "kv2/kinect2data/000065_2014-05-16_20-14-38_260595134347_rgbf000121-resize": (
        "train", (5, 7), [12, 0, 0, 2]),
    "realsense/lg/2014_10_24-14_13_06-1311000073": ("train", (4, 6), [37, 37, 1, 0]),
}  # fmt: skip


def sunrgbd_tree(root: Path, labels: str = "npy") -> dict[str, np.ndarray]:
    """SUN RGB-D's release at `root`: three scene folders (image/, depth_bfx/ with the
    release's 3-bit-rotated millimetres), SUNRGBDtoolbox's SUNRGBDMeta.mat and allsplit.mat
    (paths as the toolbox spells them), and the 37-class labels either as RedNet's per-scene
    label/label.npy ("npy") or in SUNRGBD2Dseg.mat, MATLAB v7.3 ("seg2d", needs h5py).
    Returns each scene's depth in millimetres; row 1 of the first scene is 9,000 mm, beyond
    the 8,191 mm that a plain /8 reading of the stored values gets right."""
    from seglab.data.sunrgbd import encode_sunrgbd_depth

    metas, splits, raw_labels, depths = [], {"train": [], "test": []}, [], {}
    for i, (scene, (split, (h, w), values)) in enumerate(SUN_SCENES.items()):
        folder = root / "SUNRGBD" / scene
        rgbname, depthname = f"{i:07d}.jpg", f"{i:07d}.png"
        write_image(folder / "image" / rgbname, i, size=(h, w))
        mm = np.full((h, w), 1500 + 1000 * i, np.uint16)
        if i == 0:
            mm[1] = 9000
        (folder / "depth_bfx").mkdir()
        Image.fromarray(encode_sunrgbd_depth(mm)).save(folder / "depth_bfx" / depthname)
        depths[scene] = mm
        raw = np.zeros((h, w), np.uint16)
        raw[0, : len(values)] = values
        raw_labels.append(raw)
        if labels == "npy":
            (folder / "label").mkdir()
            np.save(folder / "label" / "label.npy", raw)
        toolbox_path = f"/n/fs/sun3d/data/SUNRGBD/{scene}"
        metas.append((f"{toolbox_path}/image/{rgbname}", rgbname, depthname))
        splits[split].append(toolbox_path + ("/" if split == "test" else ""))
    meta = np.array(metas, dtype=[("rgbpath", "O"), ("rgbname", "O"), ("depthname", "O")])
    (root / "SUNRGBDtoolbox" / "Metadata").mkdir(parents=True)
    (root / "SUNRGBDtoolbox" / "traintestSUNRGBD").mkdir()
    scipy.io.savemat(root / "SUNRGBDtoolbox" / "Metadata" / "SUNRGBDMeta.mat",
                     {"SUNRGBDMeta": meta[None]})  # fmt: skip
    scipy.io.savemat(
        root / "SUNRGBDtoolbox" / "traintestSUNRGBD" / "allsplit.mat",
        {f"all{s}": np.array(paths, dtype=object)[None] for s, paths in splits.items()},
    )
    if labels == "seg2d":  # a v7.3 struct array: a field of references to (W, H) arrays
        import h5py

        with h5py.File(root / "SUNRGBDtoolbox" / "Metadata" / "SUNRGBD2Dseg.mat", "w") as f:
            refs = [f.create_dataset(f"#refs#/{i}", data=raw.T).ref
                    for i, raw in enumerate(raw_labels)]  # fmt: skip
            f.create_dataset("SUNRGBD2Dseg/seglabel", data=np.array(refs)[:, None],
                             dtype=h5py.ref_dtype)  # fmt: skip
    return depths
