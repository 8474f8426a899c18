"""COCO-format instance data (seglab/data/coco.py) and `seglab data shapes --instances`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from seglab.errors import SeglabError

mask_api = pytest.importorskip("pycocotools.mask", reason="pycocotools: pip install seglab[coco]")

from seglab.data import build_dataset  # noqa: E402
from seglab.data.coco import hflip_sample, mask_to_rle  # noqa: E402


def _tree(tmp_path, annotations, size=(10, 12)):
    """ROOT/images/a.png (H x W = size) and annotations/instances_train.json."""
    h, w = size
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    data = {
        "images": [{"id": 3, "file_name": "a.png", "height": h, "width": w}],
        "annotations": annotations,
        "categories": [{"id": 7, "name": "cat"}, {"id": 2, "name": "dog"}],
    }
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_train.json").write_text(json.dumps(data))
    return build_dataset("coco", tmp_path, "train")


def test_uncompressed_rle_decodes_to_the_same_mask_with_pycocotools():
    rng = np.random.default_rng(0)
    for mask in [rng.random((7, 9)) < 0.4, np.ones((3, 4), bool), np.zeros((3, 4), bool)]:
        rle = mask_to_rle(mask)
        assert sum(rle["counts"]) == mask.size
        decoded = mask_api.decode(mask_api.frPyObjects(rle, *mask.shape))
        assert np.array_equal(decoded, mask)
    # Column-major runs, zeros first: [[0, 1], [1, 1]] is 0, 1, 1, 1 -> one zero, three ones.
    assert mask_to_rle(np.array([[0, 1], [1, 1]]))["counts"] == [1, 3]
    assert mask_to_rle(np.array([[1, 0], [1, 0]]))["counts"] == [0, 2, 2]


def test_polygons_compressed_and_uncompressed_rle_all_read(tmp_path):
    square = np.zeros((10, 12), bool)
    square[1:4, 2:6] = True
    compressed = mask_api.encode(np.asfortranarray(square.astype(np.uint8)))
    compressed["counts"] = compressed["counts"].decode()  # as JSON stores it
    annotations = [
        {"id": 1, "image_id": 3, "category_id": 2, "bbox": [5, 5, 4, 4],
         "segmentation": [[5, 5, 9, 5, 9, 9, 5, 9]]},
        {"id": 2, "image_id": 3, "category_id": 7, "bbox": [2, 1, 4, 3],
         "segmentation": mask_to_rle(square)},
        {"id": 3, "image_id": 3, "category_id": 7, "bbox": [2, 1, 4, 3],
         "segmentation": compressed},
        {"id": 4, "image_id": 3, "category_id": 7, "bbox": [0, 0, 2, 2], "iscrowd": 1,
         "segmentation": mask_to_rle(np.ones((10, 12), bool))},
    ]  # fmt: skip
    dataset = _tree(tmp_path, annotations)
    dataset.check(0)
    assert dataset.classes.names == ["background", "dog", "cat"]  # ids 2, 7 sorted
    assert dataset.num_classes == 3 and dataset.category_ids == [2, 7]
    image, target = dataset[0]
    assert image.shape == (3, 10, 12) and image.dtype == torch.float32
    assert target["labels"].tolist() == [1, 2, 2]  # the crowd is not a training target
    assert target["ids"].tolist() == [1, 2, 3]
    assert target["boxes"][0].tolist() == [5, 5, 9, 9]  # x, y, w, h -> x1, y1, x2, y2
    polygon = target["masks"][0].numpy().astype(bool)
    assert polygon[6:9, 6:9].all() and not polygon[:4].any() and not polygon[:, :4].any()
    assert np.array_equal(target["masks"][1].numpy(), square)
    assert np.array_equal(target["masks"][2].numpy(), square)


@pytest.mark.parametrize(
    ("annotation", "reason"),
    [
        ({"bbox": [1, 1, 3, 3], "segmentation": mask_to_rle(np.zeros((10, 12)))}, "mask is empty"),
        ({"bbox": [8, 1, 6, 3]}, "outside the 12x10 image"),
        ({"bbox": [1, 1, 0, 3]}, "has no area"),
        ({"category_id": 5}, "unknown category id 5"),
    ],
)
def test_bad_annotations_are_one_line_errors_naming_file_and_id(tmp_path, annotation, reason):
    good = {"id": 41, "image_id": 3, "category_id": 7, "bbox": [1, 1, 3, 3],
            "segmentation": [[1, 1, 4, 1, 4, 4, 1, 4]]}  # fmt: skip
    dataset = _tree(tmp_path, [{**good, **annotation}])
    with pytest.raises(SeglabError) as error:
        dataset.check(0)
    message = str(error.value)
    assert "\n" not in message and reason in message
    assert "instances_train.json: annotation 41 (image a.png)" in message


def test_missing_json_and_wrong_image_size_are_one_line_errors(tmp_path):
    with pytest.raises(SeglabError, match="instances_val.json is missing"):
        build_dataset("coco", tmp_path, "val")
    dataset = _tree(tmp_path, [])
    dataset.images[0]["width"] = 99
    with pytest.raises(SeglabError, match="the image is 12x10 but .* says 99x10"):
        dataset.check(0)


def test_hflip_moves_boxes_and_masks_together():
    image = torch.zeros(3, 4, 10)
    masks = torch.zeros(1, 4, 10, dtype=torch.uint8)
    masks[0, :, 1:3] = 1  # columns 1..2: box x1=1, x2=3
    target = {"boxes": torch.tensor([[1.0, 0.0, 3.0, 4.0]]), "masks": masks}
    _, flipped = hflip_sample(image, target)
    assert flipped["boxes"].tolist() == [[7.0, 0.0, 9.0, 4.0]]  # 10 - 3, 10 - 1
    assert flipped["masks"][0, 0].nonzero().flatten().tolist() == [7, 8]


def test_occluded_objects_keep_their_visible_part():
    from seglab.data.shapes import _visible_parts

    first, second = np.zeros((6, 6), bool), np.zeros((6, 6), bool)
    first[0:4, 0:4], second[2:6, 2:6] = True, True  # the second covers first's 2x2 corner
    hidden = np.zeros((6, 6), bool)
    hidden[3:5, 3:5] = True  # drawn first, covered entirely by `second`
    instances: list = []
    _visible_parts([(4, hidden), (1, first), (2, second)], instances)
    assert [label for label, _ in instances] == [1, 2]
    assert instances[0][1].sum() == 16 - 4 and instances[1][1].sum() == 16


def test_shapes_instances_agree_with_the_semantic_masks(tmp_path):
    from seglab.data.folder import check_dataset
    from seglab.data.shapes import write_shapes_dataset

    write_shapes_dataset(tmp_path, train=6, val=2, size=40, progress=False, instances=True)
    instances = build_dataset("coco", tmp_path, "train")
    semantic = build_dataset("folder", tmp_path, "train")
    check_dataset(instances, progress=False)
    assert instances.classes.names == semantic.classes.names
    for index in range(len(instances)):
        _, target = instances.load(index)
        _, mask = semantic.load(index)
        rebuilt = np.zeros_like(mask)
        parts = zip(target["labels"], target["masks"], target["boxes"], strict=True)
        for label, instance, box in parts:
            assert not rebuilt[instance > 0].any(), "instances do not overlap"
            rebuilt[instance > 0] = label
            rows, cols = np.nonzero(instance)
            assert box.tolist() == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
        assert np.array_equal(rebuilt, mask)  # every object pixel belongs to one instance


def _instance_tree(tmp_path, values: np.ndarray):
    (tmp_path / "images").mkdir()
    (tmp_path / "instances").mkdir()
    (tmp_path / "classes.txt").write_text("background\ncat\ndog\n")
    (tmp_path / "train.txt").write_text("a\n")
    h, w = values.shape
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(values.astype(np.uint16)).save(tmp_path / "instances" / "a.png")
    return build_dataset("instance_folder", tmp_path, "train")


def test_instance_folder_reads_class_times_1000_plus_object(tmp_path):
    values = np.zeros((10, 12), np.int64)
    values[0:3, 0:4] = 1000  # cat, object 0: rows 0..2, columns 0..3
    values[5:9, 2:5] = 1001  # cat, object 1
    values[1:4, 8:12] = 2000  # dog
    values[9, :] = 7  # a stuff value below 1000: no object
    dataset = _instance_tree(tmp_path, values)
    dataset.check(0)
    image, target = dataset[0]
    assert image.shape == (3, 10, 12)
    assert target["labels"].tolist() == [1, 1, 2]
    assert target["boxes"].tolist() == [[0, 0, 4, 3], [2, 5, 5, 9], [8, 1, 12, 4]]
    assert target["masks"].sum((1, 2)).tolist() == [12, 12, 12]
    truth = dataset.coco_ground_truth()
    assert [a["bbox"] for a in truth["annotations"]] == [[0, 0, 4, 3], [2, 5, 3, 4], [8, 1, 4, 3]]
    assert [c["name"] for c in truth["categories"]] == ["cat", "dog"]


def test_instance_folder_unknown_class_is_a_one_line_error(tmp_path):
    values = np.zeros((4, 4), np.int64)
    values[:2, :2] = 3000  # class 3 of 3 classes (0..2)
    dataset = _instance_tree(tmp_path, values)
    with pytest.raises(SeglabError, match=r"instances/a.png: value 3000 is class 3, but"):
        dataset.check(0)
