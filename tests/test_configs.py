"""Every recipe in configs/ reads its dataset's layout and builds its model.

Each recipe is loaded against a tiny tree of its own format, written the way the release unpacks
(VOC 2012 + SBD converted to train_aug, Cityscapes, CamVid, ADE20K) or the generic folder layout,
at the recipe's own data.root under tmp_path: a recipe that names the wrong format, root or split
fails here, not after a user's download. Datasets are built through the registry; models on the
meta device (shapes only); each shapes twin also runs one forward/backward on a shapes batch.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from release_trees import (
    ade_tree,
    camvid_tree,
    cityscapes_tree,
    coco_tree,
    nyu_tree,
    pcontext_tree,
    sbd_tree,
    sunrgbd_tree,
    voc_tree,
)

from seglab.config import load_config
from seglab.data import DATASETS, build_dataset, check_dataset, write_sbd_train_aug
from seglab.data.shapes import write_shapes_dataset
from seglab.data.transforms import eval_transform, train_transform
from seglab.losses import SegmentationLoss
from seglab.models import create_model, list_models

REPO = Path(__file__).parent.parent
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
SHAPES_TWINS = [p for p in CONFIGS if p.stem.endswith("_shapes")]
PAPER_RECIPES = [p for p in CONFIGS if p not in SHAPES_TWINS]
VOC_TRAIN_ONLY: set[str] = set()
"""VOC recipes of papers that trained on VOC 2012 train alone (none yet); all others: train_aug."""


def _voc(data: Path) -> None:
    """data/VOCdevkit/VOC2012 with train/val/trainval, then train_aug as `seglab data convert
    sbd` writes it (the real converter, on a tiny SBD tree)."""
    voc_tree(data)
    sbd = sbd_tree(data, data / "VOCdevkit" / "VOC2012" / "JPEGImages")
    write_sbd_train_aug(sbd, data / "VOCdevkit", progress=False)


# Where each release unpacks under data/: the one layout every recipe of that format reads.
RELEASE_TREES = {
    "voc": _voc,
    "cityscapes": lambda data: cityscapes_tree(data / "cityscapes"),
    "camvid": lambda data: camvid_tree(data / "camvid"),
    "ade20k": lambda data: ade_tree(data / "ade20k"),
    "pcontext": lambda data: pcontext_tree(data / "pcontext"),
    "nyudv2": lambda data: nyu_tree(data / "nyudv2"),
    "sunrgbd": lambda data: sunrgbd_tree(data / "sunrgbd"),
    "coco": lambda data: coco_tree(data / "coco"),
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A directory holding data/ with one tree per format, as the recipes' roots name them;
    folder-layout roots get a small shapes dataset (the generic layout)."""
    base = tmp_path_factory.mktemp("workspace")
    for write in RELEASE_TREES.values():
        write(base / "data")
    folder_roots = {c.data.root for c in map(load_config, CONFIGS) if c.data.format == "folder"}
    for root in sorted(folder_roots):  # the RGB-D twin's root holds the RGB-D shapes
        depth = root.endswith("_rgbd")
        write_shapes_dataset(
            base / root, train=2, val=2, size=32, progress=False, depth=depth, instances=True
        )  # instances: the Mask R-CNN twin reads data/shapes as data.format coco
    return base


def test_the_recipe_set_is_not_empty():
    assert len(PAPER_RECIPES) >= 14 and len(SHAPES_TWINS) >= 14


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_recipe_reads_its_dataset_tree_and_builds_its_model(path, workspace):
    cfg = load_config(path)
    d = cfg.data
    root = workspace / d.root
    assert root.exists(), f"{path.name}: data.root {d.root} is not where its release unpacks"
    if getattr(DATASETS[d.format].cls, "task", "semantic") == "instance":
        return _instance_recipe(cfg, root)
    transform = train_transform(d.crop_size, d.scale_range, d.hflip, d.augment)
    train = build_dataset(d.format, root, d.train_split, transform)
    val = build_dataset(d.format, root, d.val_split, eval_transform())
    check_dataset(train, progress=False)  # every file read, raw label values checked
    check_dataset(val, progress=False)
    image, mask = train[(0, 1234)]
    channels = 3 + ("depth" in train.inputs)  # RGB-D datasets put depth last
    assert image.dtype == torch.float32 and image.shape[0] == channels
    assert mask.dtype == torch.int64
    if d.crop_size:
        assert tuple(image.shape[1:]) == tuple(d.crop_size)
    # pretrained weights cannot be downloaded here; everything else is the recipe's
    options = {k: v for k, v in cfg.model.options.items() if k != "pretrained"}
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = create_model(cfg.model.name, train.num_classes, channels, **options)
    assert model.inputs == train.inputs or model.inputs == ("image",), path.name
    assert sum(p.numel() for p in model.parameters()) > 0


def test_recipes_of_one_dataset_read_one_layout():
    """A release has one format and one root; a recipe's file name names its dataset."""
    roots: dict[str, set[str]] = {}
    formats_of_root: dict[str, set[str]] = {}
    for path in PAPER_RECIPES:
        d = load_config(path).data
        roots.setdefault(d.format, set()).add(d.root)
        formats_of_root.setdefault(d.root, set()).add(d.format)
        named = set(path.stem.split("_")) & (set(DATASETS) - {"folder"})
        assert named <= {d.format}, f"{path.name} names {named} but reads data.format {d.format}"
        if not named:
            assert d.format == "folder", f"{path.name}: name its dataset in the file name"
    for format, format_roots in roots.items():
        if format != "folder":
            assert len(format_roots) == 1, f"{format} recipes read {sorted(format_roots)}"
    for root, root_formats in formats_of_root.items():
        assert len(root_formats) == 1, f"{root} is read as {sorted(root_formats)}"


def test_voc_recipes_train_on_train_aug_and_validate_on_val():
    voc = [p for p in PAPER_RECIPES if load_config(p).data.format == "voc"]
    assert len(voc) >= 11
    for path in voc:
        d = load_config(path).data
        expected = "train" if path.stem in VOC_TRAIN_ONLY else "train_aug"
        assert (d.train_split, d.val_split) == (expected, "val"), path.name


def test_every_registered_model_has_a_paper_recipe_and_a_shapes_twin():
    recipe_models = {load_config(p).model.name for p in PAPER_RECIPES}
    twin_models = {load_config(p).model.name for p in SHAPES_TWINS}
    missing = [m for m in list_models() if m not in recipe_models]
    assert not missing, f"no paper recipe in configs/ for {missing}"
    missing = [m for m in list_models() if m not in twin_models]
    assert not missing, f"no configs/*_shapes.yaml twin for {missing}"


def test_every_config_path_named_in_code_and_docs_exists():
    sources = [*sorted((REPO / "seglab").rglob("*.py")), REPO / "README.md", *CONFIGS]
    named = {}
    for source in sources:
        for match in re.findall(r"configs/[\w.-]+\.yaml", source.read_text()):
            named.setdefault(match, source.relative_to(REPO))
    assert "configs/unet_shapes.yaml" in named  # config.py's example: the scan finds it
    missing = {name: str(where) for name, where in named.items() if not (REPO / name).is_file()}
    assert not missing, f"named but absent: {missing}"


@pytest.mark.parametrize("path", SHAPES_TWINS, ids=[p.stem for p in SHAPES_TWINS])
def test_shapes_twin_runs_a_forward_and_backward_step(path, workspace):
    """One training step's worth of work on two 32x32 shapes scenes: the twin's model with
    its options, the trainer's loss (aux outputs and their weights included)."""
    torch.manual_seed(0)
    cfg = load_config(path)
    if cfg.data.format == "coco":  # Mask R-CNN: the model's own loss dict
        return _instance_recipe(cfg, workspace / cfg.data.root, step=True)
    assert cfg.data.format == "folder" and cfg.data.root in ("data/shapes", "data/shapes_rgbd")
    dataset = build_dataset("folder", workspace / cfg.data.root, "train", eval_transform())
    images, masks = (torch.stack(t) for t in zip(dataset[0], dataset[1], strict=True))
    channels = 3 + ("depth" in dataset.inputs)
    model = create_model(cfg.model.name, dataset.num_classes, channels, **cfg.model.options)
    assert model.inputs == dataset.inputs or model.inputs == ("image",), path.name
    model.train()
    loss = SegmentationLoss(aux_weights=model.aux_weights, se_weight=model.se_weight)
    loss = loss(model(images), masks)
    loss.backward()
    assert torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def _instance_recipe(cfg, root: Path, step: bool = False) -> None:
    """An instance recipe (data.format coco): its splits read and check, its model builds on
    meta; with step, one loss-dict forward/backward of the real model on two images."""
    train = build_dataset(cfg.data.format, root, cfg.data.train_split)
    val = build_dataset(cfg.data.format, root, cfg.data.val_split)
    check_dataset(train, progress=False)
    check_dataset(val, progress=False)
    image, target = train[0]
    assert image.dtype == torch.float32 and target["masks"].dtype == torch.uint8
    options = {k: v for k, v in cfg.model.options.items() if k != "pretrained"}
    with torch.device("meta"):
        assert create_model(cfg.model.name, train.num_classes, 3, **options).task == "instance"
    if step:
        torch.manual_seed(0)
        model = create_model(cfg.model.name, train.num_classes, 3, **options).train()
        images, targets = zip(train[0], train[1], strict=True)
        loss = sum(model(list(images), list(targets)).values())
        loss.backward()
        assert torch.isfinite(loss)
