"""Mask R-CNN through seglab's engine: COCO AP (engine/instance_eval.py), the trainer's instance
path (loss terms logged, resume), eval and predict of instance weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("pycocotools", reason="COCO AP needs pycocotools: pip install seglab[coco]")

from seglab.config import load_config  # noqa: E402
from seglab.data import build_dataset  # noqa: E402
from seglab.data.shapes import write_shapes_dataset  # noqa: E402
from seglab.engine.instance_eval import _coco_scores, detections_to_results  # noqa: E402
from seglab.errors import SeglabError  # noqa: E402

LOSS_TERMS = ["loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    write_shapes_dataset(root, train=4, val=2, size=48, progress=False, instances=True)
    return root


def _ground_truth_as_detections(dataset, index: int, shift: float = 0.0) -> dict:
    _, target = dataset.load(index)
    masks = np.roll(target["masks"], int(shift), axis=2)  # shift right by `shift` pixels
    boxes = target["boxes"] + np.array([shift, 0, shift, 0], np.float32)
    return {
        "boxes": boxes,
        "labels": target["labels"],
        "scores": np.ones(len(boxes), np.float32),
        "masks": masks[:, None].astype(np.float32),
    }


def _scores(dataset, detections: list[dict]):
    from pycocotools.coco import COCO

    results = []
    for index, detection in enumerate(detections):
        image_id = dataset.images[index]["id"]
        results += detections_to_results(detection, image_id, dataset.category_ids)
    return _coco_scores(
        COCO(str(dataset.annotation_path)), results, "segm", dataset.classes.names[1:]
    )


def test_coco_ap_is_one_for_the_ground_truth_and_falls_when_it_is_wrong(shapes):
    dataset = build_dataset("coco", shapes, "train")
    perfect = [_ground_truth_as_detections(dataset, i) for i in range(len(dataset))]
    summary, per_class = _scores(dataset, perfect)
    assert summary["AP"] == pytest.approx(1.0) and summary["AP50"] == pytest.approx(1.0)
    present = {
        dataset.classes.names[label] for i in range(4) for label in dataset.load(i)[1]["labels"]
    }
    assert all(per_class[name] == pytest.approx(1.0) for name in present)
    assert all(per_class[name] is None for name in set(per_class) - present)  # no ground truth
    # Every mask and box moved by 24 px, half the image: objects are at most 2 x 0.24 x 48 = 23 px
    # wide, so none overlaps its own ground truth any more (IoU 0).
    shifted = [_ground_truth_as_detections(dataset, i, shift=24) for i in range(4)]
    assert _scores(dataset, shifted)[0]["AP"] < 0.2
    assert _scores(dataset, [])[0]["AP"] == 0.0  # no detections at all


def test_wrong_class_ids_score_zero(shapes):
    dataset = build_dataset("coco", shapes, "train")
    detections = [_ground_truth_as_detections(dataset, i) for i in range(4)]
    for detection in detections:  # every label to the next class (1..5 cyclic)
        detection["labels"] = detection["labels"] % (dataset.num_classes - 1) + 1
    assert _scores(dataset, detections)[0]["AP"] == 0.0


def _config(shapes, run_dir, iters, **train):
    cfg = load_config("configs/maskrcnn_shapes.yaml")
    cfg.data.root, cfg.run_dir = str(shapes), str(run_dir)
    cfg.data.batch_size = 2
    cfg.model.options = {"backbone": "resnet18", "width": 16, "min_size": 96, "max_size": 96}
    cfg.optim.name, cfg.optim.momentum = "sgd", 0.9  # the shapes config's AdamW needs ~1e-3
    cfg.optim.lr, cfg.optim.warmup_iters, cfg.optim.milestones = 0.01, 2, [iters]
    cfg.train.iters, cfg.train.eval_every, cfg.train.log_every = iters, iters, 1
    cfg.train.checkpoint_every, cfg.train.threads, cfg.train.tensorboard = 2, 1, False
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


def test_trainer_logs_each_loss_term_and_resumes_to_the_same_weights(shapes, tmp_path):
    from safetensors.torch import load_file

    from seglab.engine.trainer import train

    straight = train(_config(shapes, tmp_path / "a", 4), progress=False)
    lines = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    steps = [line for line in lines if "loss" in line]
    assert [line["step"] for line in steps] == [1, 2, 3, 4]
    for line in steps:  # the logged loss is the sum of its logged terms
        assert line["loss"] == pytest.approx(sum(line[k] for k in LOSS_TERMS), abs=1e-4)
    (val,) = [line["val"] for line in lines if "val" in line]
    assert {"mask_AP", "mask_AP50", "box_AP", "box_AP75", "mask_APs"} <= set(val)

    train(_config(shapes, tmp_path / "b", 4), progress=False, stop_after=2)
    resumed = train(_config(shapes, tmp_path / "b", 4), resume=True, progress=False)
    a, b = load_file(straight / "final.safetensors"), load_file(resumed / "final.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_semantic_model_on_instance_data_is_a_one_line_error(shapes, tmp_path):
    from seglab.engine.trainer import train

    cfg = _config(shapes, tmp_path / "c", 2)
    cfg.model.name, cfg.model.options = "unet", {"width": 4, "depth": 2}
    with pytest.raises(SeglabError, match="'unet' is a semantic model but data.format 'coco'"):
        train(cfg, progress=False)


def test_eval_and_predict_of_instance_weights(shapes, tmp_path):
    from seglab.engine.evaluate_run import evaluate_checkpoint
    from seglab.instance_predict import InstanceSegmenter
    from seglab.models import create_model
    from seglab.predict import predict_files
    from seglab.weights import save_weights

    dataset = build_dataset("coco", shapes, "val")
    torch.manual_seed(0)
    model = create_model("maskrcnn", 6, backbone="resnet18", width=16, min_size=64, max_size=64)
    weights = save_weights(model, tmp_path / "w.safetensors", dataset.classes)
    metrics, report = evaluate_checkpoint(
        weights, shapes, "val", tmp_path / "r", data_format="coco"
    )
    assert set(metrics["per_class"]) == set(dataset.classes.names[1:])
    assert "| mask |" in report.read_text() and (tmp_path / "r" / "results.json").is_file()

    found = predict_files(weights, [shapes / "images"], tmp_path / "p", progress=False)
    assert len(found.written) == 6 and not found.failed  # 4 train + 2 val images
    entries = json.loads(found.results.read_text())
    assert all(
        {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(e) for e in entries
    )
    segmenter = InstanceSegmenter.from_checkpoint(weights, min_score=0.0)
    instances = segmenter.predict(dataset.load(0)[0])
    assert instances.masks.shape[1:] == (48, 48) and len(instances.names) == len(instances.scores)
    labels = instances.semantic(segmenter.num_classes)
    assert labels.shape == (48, 48) and set(np.unique(labels)) <= set(range(6))
    with pytest.raises(SeglabError, match="neither --crf nor --labelids"):
        predict_files(weights, [shapes / "images"], tmp_path / "q", crf="deeplab", progress=False)


def test_short_training_raises_mask_ap(tmp_path):
    """50 steps on 4 images (validated on the same 4: the test is that learning happens, not
    generalisation): mask AP50 goes from about 0 for the untrained model to at least 0.4."""
    from seglab.engine.instance_eval import evaluate_instances
    from seglab.engine.trainer import train
    from seglab.models import create_model

    root = tmp_path / "data"
    write_shapes_dataset(root, train=4, val=1, size=48, progress=False, instances=True)
    cfg = _config(root, tmp_path / "run", 50, eval_every=50, checkpoint_every=50, log_every=10)
    cfg.data.val_split, cfg.data.batch_size, cfg.data.hflip = "train", 4, False
    cfg.optim.lr, cfg.optim.grad_clip = 0.02, 10.0
    cfg.model.options["box_batch_size_per_image"] = 32
    torch.manual_seed(0)
    untrained = create_model("maskrcnn", 6, **cfg.model.options)
    dataset = build_dataset("coco", root, "train")
    before = evaluate_instances(untrained, dataset, torch.device("cpu"), progress=False)
    run = train(cfg, progress=False)
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (after,) = [line["val"] for line in lines if "val" in line]
    assert before["summary"]["mask_AP50"] < 0.1
    assert after["mask_AP50"] >= 0.4, after
