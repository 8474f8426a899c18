"""PASCAL-Context in the converted mask-PNG layout: both protocols' label mappings, tiny tree."""

from __future__ import annotations

import numpy as np
import pytest
from release_trees import PCONTEXT_MASKS, pcontext_tree, tile, write_label_mask

from seglab.data import build_dataset, check_dataset
from seglab.errors import SeglabError


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return pcontext_tree(tmp_path_factory.mktemp("pcontext"))


def test_59_class_protocol_ignores_background_and_shifts_the_classes(root):
    train = build_dataset("pcontext", root, "train")
    assert train.num_classes == 59 and len(train) == 2
    assert train.classes.names[0] == "aeroplane" and train.classes.names[58] == "wood"
    check_dataset(train, progress=False)
    _, mask = train.load(0)  # raw row 0, 1, 59, 15, then zeros
    assert mask[0, :5].tolist() == [255, 0, 58, 14, 255]
    val = build_dataset("pcontext", root / "VOCdevkit", "val")  # VOCdevkit/ itself works too
    assert val.load(0)[1][0, :4].tolist() == [58, 255, 255, 1]


def test_60_class_protocol_keeps_background_as_class_0(root):
    train = build_dataset("pcontext60", root, "train")
    assert train.num_classes == 60 and train.classes.names[:2] == ["background", "aeroplane"]
    assert train.load(0)[1][0, :5].tolist() == [0, 1, 59, 15, 0]
    assert sorted(np.unique(train.load(1)[1]).tolist()) == [0, 37]


def test_wrong_layout_and_unknown_values_are_one_line_errors(root, tmp_path):
    with pytest.raises(SeglabError, match="SegmentationClassContext is missing"):
        build_dataset("pcontext", tmp_path, "train")
    with pytest.raises(SeglabError, match="splits are train, val"):
        build_dataset("pcontext", root, "trainval")
    bad = pcontext_tree(tmp_path / "bad")
    name = next(n for (split, n) in PCONTEXT_MASKS if split == "val")
    write_label_mask(bad / "VOCdevkit/VOC2010/SegmentationClassContext" / f"{name}.png", tile([60]))
    with pytest.raises(SeglabError, match="mask value 60 is not a pcontext label"):
        check_dataset(build_dataset("pcontext", bad, "val"), progress=False)
