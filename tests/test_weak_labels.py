"""Weak labels (seglab/data/weak_labels.py): derived like a person would annotate, read back,
and checked with one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from seglab.data.weak_labels import (
    derive_weak_labels,
    points_mask,
    read_boxes,
    read_points,
    read_scribbles,
    read_tags,
    read_weak_labels,
)
from seglab.errors import SeglabError

CLASSES = ["background", "disc", "square"]


def square_scene() -> np.ndarray:
    """20x20 background with a 10x10 square (class 2) on rows 5..14, columns 4..13."""
    labels = np.zeros((20, 20), np.uint8)
    labels[5:15, 4:14] = 2
    return labels


def test_derived_labels_of_a_square():
    labels = square_scene()
    tags, points, scribbles, boxes = derive_weak_labels(labels, np.random.default_rng(0))
    assert tags == [2]  # background is never tagged
    assert boxes == [(4, 5, 14, 15, 2)]  # x1, y1 exclusive: columns 4..13, rows 5..14
    # the square's depth (edt from outside) peaks at 5 in its centre: its core is depth >= 2.5,
    # i.e. 3 or more pixels in from every side: rows 7..12, columns 6..11
    square_points = [p for p in points if p[2] == 2]
    assert len(square_points) == 1
    x, y, _ = square_points[0]
    assert 6 <= x <= 11 and 7 <= y <= 12
    stroke = np.argwhere(scribbles == 2)
    # the outline of that 6x6 core: 20 pixels, none on the square's own border
    assert len(stroke) == 20
    assert stroke[:, 0].min() == 7 and stroke[:, 0].max() == 12
    assert stroke[:, 1].min() == 6 and stroke[:, 1].max() == 11
    assert set(np.unique(scribbles)) == {0, 2, 255}
    background_stroke = scribbles == 0
    assert not (background_stroke & (labels == 2)).any()
    # background strokes keep away from the square: no 4-neighbour of them is square
    grown = np.zeros_like(background_stroke)
    grown[1:] |= background_stroke[:-1]
    grown[:-1] |= background_stroke[1:]
    grown[:, 1:] |= background_stroke[:, :-1]
    grown[:, :-1] |= background_stroke[:, 1:]
    assert not (grown & (labels == 2)).any()
    assert [p[2] for p in points].count(0) == 1


def test_two_separate_objects_of_one_class_get_a_box_each():
    labels = np.zeros((16, 16), np.uint8)
    labels[1:4, 1:4] = 1
    labels[10:15, 9:12] = 1
    _, points, _, boxes = derive_weak_labels(labels, np.random.default_rng(1))
    assert sorted(boxes) == [(1, 1, 4, 4, 1), (9, 10, 12, 15, 1)]
    assert [p[2] for p in points].count(1) == 2


def test_points_mask():
    mask = points_mask([(2, 1, 3), (0, 0, 1)], (3, 4))
    expected = np.full((3, 4), 255, np.uint8)
    expected[1, 2], expected[0, 0] = 3, 1
    np.testing.assert_array_equal(mask, expected)


def test_readers_round_trip(tmp_path):
    (tmp_path / "tags").mkdir()
    (tmp_path / "tags" / "a.txt").write_text("square\n\ndisc\n")
    (tmp_path / "points").mkdir()
    (tmp_path / "points" / "a.json").write_text('[[3, 4, "disc"]]')
    (tmp_path / "boxes").mkdir()
    (tmp_path / "boxes" / "a.json").write_text('[[0, 0, 8, 6, "square"]]')
    found = read_weak_labels(tmp_path, "a", CLASSES, (6, 8))
    assert found == {"tags": [1, 2], "points": [(3, 4, 1)], "boxes": [(0, 0, 8, 6, 2)]}


def test_unknown_class_names_the_file_and_line(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("disc\ncat\n")
    with pytest.raises(SeglabError, match=r"t\.txt: line 2: class 'cat' is not in classes"):
        read_tags(path, CLASSES)


@pytest.mark.parametrize(
    "box",
    [[0, 0, 9, 6, "disc"], [-1, 0, 4, 4, "disc"], [3, 2, 3, 5, "disc"], [0, 0, 1.5, 2, "disc"]],
)
def test_box_outside_the_image(tmp_path, box):
    path = tmp_path / "b.json"
    path.write_text(json.dumps([box]))
    with pytest.raises(SeglabError, match=r"b\.json: box 0 .* outside the 8x6 image") as error:
        read_boxes(path, CLASSES, (6, 8))
    assert "\n" not in str(error.value)


def test_point_outside_and_bad_json(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('[[8, 0, "disc"]]')
    with pytest.raises(SeglabError, match=r"p\.json: point 0 \(8, 0\) is outside the 8x6"):
        read_points(path, CLASSES, (6, 8))
    path.write_text('{"x": 1}')
    with pytest.raises(SeglabError, match=r"p\.json: expected a list of 3-item lists"):
        read_points(path, CLASSES, (6, 8))
    path.write_text("[[1, 2")
    with pytest.raises(SeglabError, match=r"p\.json: not readable JSON"):
        read_points(path, CLASSES, (6, 8))


def test_scribble_checks(tmp_path):
    path = tmp_path / "s.png"
    values = np.full((6, 8), 255, np.uint8)
    values[2, 3] = 1
    Image.fromarray(values, mode="L").save(path)
    np.testing.assert_array_equal(read_scribbles(path, 3, (6, 8)), values)
    with pytest.raises(SeglabError, match=r"s\.png: scribbles are 8x6 but the image is 8x7"):
        read_scribbles(path, 3, (7, 8))
    values[0, 0] = 5
    Image.fromarray(values, mode="L").save(path)
    with pytest.raises(SeglabError, match=r"s\.png: value 5 is not a class id \(0\.\.2\)"):
        read_scribbles(path, 3, (6, 8))


def test_shapes_writes_all_four_consistent_with_the_masks(tmp_path):
    from seglab.data.folder import read_mask
    from seglab.data.shapes import SHAPE_CLASSES, write_shapes_dataset

    root = write_shapes_dataset(tmp_path, train=2, val=1, size=32, progress=False, weak=True)
    for name in ("train_00000", "train_00001", "val_00000"):
        labels = read_mask(root / "masks" / f"{name}.png")
        found = read_weak_labels(root, name, SHAPE_CLASSES, labels.shape)
        assert set(found) == {"tags", "points", "scribbles", "boxes"}
        assert found["tags"] == sorted(set(np.unique(labels).tolist()) - {0})
        for x, y, label in found["points"]:
            assert labels[y, x] == label
        labelled = found["scribbles"] != 255
        np.testing.assert_array_equal(found["scribbles"][labelled], labels[labelled])
        for x0, y0, x1, y1, label in found["boxes"]:
            inside = labels[y0:y1, x0:x1] == label
            # tight: the object touches all four sides of its box
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any()
            assert inside[:, -1].any()
