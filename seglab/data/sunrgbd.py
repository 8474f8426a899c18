"""SUN RGB-D (Song, Lichtenberg, Xiao, CVPR 2015): the 37-class benchmark, 10,335 RGB-D images,
the standard split of 5,285 train / 5,050 test, as RedNet and ACNet read it.

    ROOT/ (SUNRGBD.zip and SUNRGBDtoolbox.zip unzipped side by side)
      SUNRGBD/{kv1,kv2,realsense,xtion}/.../SCENE/   one folder per image
        image/NAME.jpg            the RGB image
        depth_bfx/NAME.png        the toolbox's hole-filled depth (what RedNet and ACNet train on)
        label/label.npy           optional: the 37-class labels RedNet's/ACNet's loader writes here
        seg.mat, depth/, ...      not read (seg.mat's `seglabel` indexes the scene's own object
                                  names, not the 37 classes)
      SUNRGBDtoolbox/Metadata/SUNRGBDMeta.mat       image order and file names (`rgbpath`,
                                                    `rgbname`, `depthname`)
      SUNRGBDtoolbox/Metadata/SUNRGBD2Dseg.mat      MATLAB v7.3: `seglabel` per image, in
                                                    SUNRGBDMeta's order, 1..37 = `seg37list`,
                                                    0 = void (needs h5py; not read when every
                                                    scene has label/label.npy)
      SUNRGBDtoolbox/traintestSUNRGBD/allsplit.mat  `alltrain` (5,285) / `alltest` (5,050)
                                                    scene folders

Depth PNGs are 16-bit millimetres rotated left by 3 bits: the toolbox's read3dPoints.m decodes
`bitor(bitshift(d, -3), bitshift(d, 13))`. Below 8.192 m that is d / 8, so the stored unit is
1/8 mm (RedNet normalises the stored values with mean 19050, std 9650, i.e. 2.38 +- 1.21 m);
the rotation is decoded exactly here, not clipped (the toolbox clips at 8 m for point clouds).

Read once: the first use writes ROOT/sunrgbd37/ in the folder layout (images/ as the release's
JPEGs, masks/ with ids 0..36 and void as 255, depth/ in millimetres, depth.txt, classes.txt,
train.txt, test.txt), named by the 1-based SUNRGBDMeta index, which every later run reads
like any folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from seglab.data.depth import read_depth_png, write_depth_description
from seglab.data.folder import FolderDataset, write_classes_file, write_mask
from seglab.data.labels import IGNORE_INDEX, default_palette
from seglab.data.registry import register_dataset
from seglab.errors import SeglabError

SUN37_CLASSES = (
    "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
    "picture", "counter", "blinds", "desk", "shelves", "curtain", "dresser", "pillow", "mirror",
    "floor_mat", "clothes", "ceiling", "books", "fridge", "tv", "paper", "towel",
    "shower_curtain", "box", "whiteboard", "person", "night_stand", "toilet", "sink", "lamp",
    "bathtub", "bag",
)  # fmt: skip
"""The toolbox's seg37list.mat: label value i (1..37) is SUN37_CLASSES[i - 1]."""
TOOLBOX = Path("SUNRGBDtoolbox")
META = TOOLBOX / "Metadata" / "SUNRGBDMeta.mat"
SEG2D = TOOLBOX / "Metadata" / "SUNRGBD2Dseg.mat"
SPLIT = TOOLBOX / "traintestSUNRGBD" / "allsplit.mat"
FOLDER = "sunrgbd37"
DEPTH_DIR = "depth_bfx"


def decode_sunrgbd_depth(stored: np.ndarray) -> np.ndarray:
    """(H, W) uint16 as stored -> (H, W) uint16 millimetres: the 16-bit rotation right by 3
    bits of read3dPoints.m (0 stays 0: no measurement)."""
    stored = stored.astype(np.uint16)
    return (stored >> 3) | (stored << 13)


def encode_sunrgbd_depth(millimetres: np.ndarray) -> np.ndarray:
    """Inverse of decode_sunrgbd_depth (the release's encoding; tests write trees with it)."""
    mm = millimetres.astype(np.uint16)
    return (mm << 3) | (mm >> 13)


def _scene_of(path: str) -> str:
    """'/n/fs/sun3d/data/SUNRGBD/kv1/NYUdata/NYU0001/' -> 'kv1/NYUdata/NYU0001'."""
    path = str(path).replace("\\", "/").rstrip("/")
    return path.split("SUNRGBD/", 1)[1] if "SUNRGBD/" in path else path


def _loadmat(path: Path) -> dict:
    if not path.is_file():
        raise SeglabError(
            f"{path} is missing; unzip SUNRGBDtoolbox.zip beside SUNRGBD/ "
            "(see seglab/data/sunrgbd.py)"
        )
    from scipy.io import loadmat

    try:
        return loadmat(path, squeeze_me=True, struct_as_record=False)
    except (ValueError, OSError, NotImplementedError) as error:
        raise SeglabError(f"{path}: cannot read the .mat file ({error})") from None


def _meta_entries(root: Path) -> list[tuple[str, str, str]]:
    """(scene folder relative to SUNRGBD/, rgbname, depthname) per image, in SUNRGBDMeta's
    order (the order of SUNRGBD2Dseg's labels)."""
    mat = _loadmat(root / META)
    if "SUNRGBDMeta" not in mat:
        raise SeglabError(f"{root / META} has no variable 'SUNRGBDMeta'")
    entries = []
    for number, meta in enumerate(np.atleast_1d(mat["SUNRGBDMeta"]), start=1):
        try:
            scene = _scene_of(meta.rgbpath).rsplit("/", 2)[0]  # drop image/NAME.jpg
            entries.append((scene, str(meta.rgbname), str(meta.depthname)))
        except AttributeError as error:
            raise SeglabError(f"{root / META}: entry {number} lacks a field ({error})") from None
    return entries


def _split_scenes(root: Path) -> dict[str, str]:
    """scene folder -> 'train' or 'test', from allsplit.mat's alltrain / alltest."""
    mat = _loadmat(root / SPLIT)
    split_of = {}
    for split, key in (("train", "alltrain"), ("test", "alltest")):
        if key not in mat:
            raise SeglabError(f"{root / SPLIT} has no variable {key!r}")
        split_of.update({_scene_of(p): split for p in np.atleast_1d(mat[key])})
    return split_of


class _Seg2D:
    """The 37-class labels of SUNRGBD2Dseg.mat (HDF5), opened on the first image that needs
    them: one (H, W) array per SUNRGBDMeta index."""

    def __init__(self, path: Path) -> None:
        self.path, self.file, self.refs = path, None, None

    def label(self, index: int) -> np.ndarray:
        if self.file is None:
            if not self.path.is_file():
                raise SeglabError(
                    f"{self.path} is missing and a scene has no label/label.npy; the 37-class "
                    "labels are in the toolbox's SUNRGBD2Dseg.mat"
                )
            try:
                import h5py
            except ImportError:
                raise SeglabError(
                    f"{self.path} is MATLAB v7.3 (HDF5): install h5py "
                    "(`pip install 'seglab[rgbd]'`)"
                ) from None
            try:
                self.file = h5py.File(self.path, "r")
                self.refs = np.asarray(self.file["SUNRGBD2Dseg"]["seglabel"]).ravel()
            except (OSError, KeyError) as error:
                raise SeglabError(f"{self.path}: no SUNRGBD2Dseg.seglabel ({error})") from None
        if index >= len(self.refs):
            raise SeglabError(
                f"{self.path} holds {len(self.refs)} labels but SUNRGBDMeta.mat lists more images"
            )
        return np.asarray(self.file[self.refs[index]]).T  # h5py sees MATLAB's axes reversed

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def _read_label(scene: Path, index: int, seg2d: _Seg2D, size: tuple[int, int]) -> np.ndarray:
    """(H, W) train ids of image `index` (0-based): 1..37 -> 0..36, void 0 -> 255."""
    npy = scene / "label" / "label.npy"
    source = npy if npy.is_file() else seg2d.path
    try:
        raw = np.load(npy) if npy.is_file() else seg2d.label(index)
    except (ValueError, OSError) as error:
        raise SeglabError(f"{npy}: cannot read the label array ({error})") from None
    where = source if source == npy else f"{source} (image {index + 1}, {scene.name})"
    if raw.shape != (size[1], size[0]):
        raise SeglabError(
            f"{where}: labels are {raw.shape[1]}x{raw.shape[0]} but the image is "
            f"{size[0]}x{size[1]}"
        )
    raw = np.rint(raw).astype(np.int64)
    if raw.min(initial=0) < 0 or raw.max(initial=0) > len(SUN37_CLASSES):
        bad = raw.min() if raw.min() < 0 else raw.max()
        raise SeglabError(f"{where}: label value {bad} is outside 0..37 (0 void, 1..37 classes)")
    return np.where(raw == 0, IGNORE_INDEX, raw - 1)


def _read_depth_png(path: Path, size: tuple[int, int]) -> np.ndarray:
    stored = read_depth_png(path, f"every SUN RGB-D scene needs {DEPTH_DIR}/")
    if stored.dtype != np.uint16:
        raise SeglabError(f"{path}: depth must be a 16-bit one-channel PNG, got {stored.dtype}")
    if stored.shape != (size[1], size[0]):
        raise SeglabError(
            f"{path}: depth is {stored.shape[1]}x{stored.shape[0]} but the image is "
            f"{size[0]}x{size[1]}"
        )
    return decode_sunrgbd_depth(stored)


def extract_sunrgbd(root: Path, out: Path, progress: bool = True) -> Path:
    """Write the folder layout of the release at `root` into `out` (see above)."""
    entries, split_of = _meta_entries(root), _split_scenes(root)
    for folder in ("images", "masks", "depth"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    colors = default_palette(len(SUN37_CLASSES))
    write_classes_file(out / "classes.txt", SUN37_CLASSES, colors)
    write_depth_description(out, 0.001)
    seg2d, names = _Seg2D(root / SEG2D), {"train": [], "test": []}
    try:
        for index, (scene_name, rgbname, depthname) in enumerate(
            tqdm(entries, desc="converting SUN RGB-D", unit="img", disable=not progress)
        ):
            scene = root / "SUNRGBD" / scene_name
            image_path = scene / "image" / rgbname
            if scene_name not in split_of:
                raise SeglabError(f"{scene}: in SUNRGBDMeta.mat but in neither split of {SPLIT}")
            try:
                with Image.open(image_path) as image:
                    size = image.size  # (W, H), the header only
            except FileNotFoundError:
                raise SeglabError(f"{image_path} is missing (SUNRGBDMeta.mat lists it)") from None
            except OSError as error:
                raise SeglabError(f"{image_path}: cannot read the image ({error})") from None
            name = f"{index + 1:05d}"
            ids = _read_label(scene, index, seg2d, size)
            millimetres = _read_depth_png(scene / DEPTH_DIR / depthname, size)
            shutil.copyfile(image_path, out / "images" / f"{name}{image_path.suffix.lower()}")
            write_mask(ids, out / "masks" / f"{name}.png", colors)
            Image.fromarray(millimetres).save(out / "depth" / f"{name}.png", format="PNG")
            names[split_of[scene_name]].append(name)
    finally:
        seg2d.close()
    for split in ("train", "test"):  # test.txt last: its presence marks a finished conversion
        (out / f"{split}.txt").write_text("".join(f"{n}\n" for n in names[split]))
    return out


@register_dataset(
    "sunrgbd",
    "SUN RGB-D release (SUNRGBD/ scene folders: image/, depth_bfx/) + SUNRGBDtoolbox "
    "(Meta, 2Dseg, allsplit): 37 classes, RGB-D, train 5,285 / test 5,050, converted once to "
    "ROOT/sunrgbd37/",
)
class SUNRGBD(FolderDataset):
    """SUN RGB-D at 37 classes, RGB-D (inputs ("image", "depth")); splits train and test."""

    release_counts = {"train": 5285, "test": 5050}

    def __init__(self, root, split: str = "train", transform=None, cache: bool = False):
        root = Path(root)
        folder = root / FOLDER
        if not (folder / "test.txt").is_file():
            if not (root / "SUNRGBD").is_dir():
                raise SeglabError(
                    f"{root / 'SUNRGBD'} is missing: give the folder holding SUNRGBD/ and "
                    "SUNRGBDtoolbox/ (SUNRGBD.zip and SUNRGBDtoolbox.zip unzipped)"
                )
            extract_sunrgbd(root, folder)
        super().__init__(folder, split, transform, cache)

    @classmethod
    def available_splits(cls, root: str | Path) -> list[str]:
        """train and test where `root` holds the release or its conversion, else none (so a
        tree of another format is not taken for SUN RGB-D by `seglab data check`'s hint)."""
        root = Path(root)
        release = (root / FOLDER / "test.txt").is_file() or (root / "SUNRGBD").is_dir()
        return ["train", "test"] if release else []
