"""COCO evaluation of an instance model: mask and box AP, AP50, AP75, small/medium/large
(pycocotools' COCOeval, the protocol of the COCO leaderboard and of Mask R-CNN's tables), per-
class AP, and the report with instance overlays (one colour per instance, class and score).

The ground truth is the dataset's own instances JSON (crowds included, as COCOeval wants);
the detections are written as a COCO results list (category ids of the JSON, boxes
[x, y, w, h], masks as compressed RLE thresholded at 0.5), the same list `seglab predict`
writes for instance weights.
"""

from __future__ import annotations

import colorsys
import contextlib
import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

from seglab.data.coco import mask_utils

AP_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
"""COCOeval.stats[0:6]: AP at IoU .50:.95, at .50, at .75, on small/medium/large objects."""
MASK_THRESHOLD = 0.5


def instance_colors(count: int) -> list[tuple[int, int, int]]:
    """`count` distinct bright colours (hues stepped by the golden ratio)."""
    hues = ((0.6180339887 * i) % 1.0 for i in range(count))
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(h, 0.85, 1.0)) for h in hues]


def detections_to_results(
    detection: dict, image_id: int, category_ids: list[int], file_name: str | None = None
) -> list[dict]:
    """One image's model output (tensors or arrays) -> COCO results entries."""
    coco_mask = mask_utils()
    masks = np.asarray(detection["masks"]).reshape(-1, *np.asarray(detection["masks"]).shape[-2:])
    results = []
    for box, label, score, mask in zip(
        np.asarray(detection["boxes"]).tolist(),
        np.asarray(detection["labels"]).tolist(),
        np.asarray(detection["scores"]).tolist(),
        masks,
        strict=True,
    ):
        rle = coco_mask.encode(np.asfortranarray((mask > MASK_THRESHOLD).astype(np.uint8)))
        rle["counts"] = rle["counts"].decode("ascii")
        x1, y1, x2, y2 = box
        entry = {
            "image_id": int(image_id),
            "category_id": int(category_ids[label - 1]),
            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
            "score": round(float(score), 5),
            "segmentation": rle,
        }
        if file_name is not None:
            entry["file_name"] = file_name
        results.append(entry)
    return results


@torch.no_grad()
def detect(model, images: list[torch.Tensor], device: torch.device) -> list[dict]:
    """The model's eval-mode detections for float (C, H, W) images in [0, 1], as numpy."""
    model.eval()
    outputs = model([image.to(device) for image in images])
    return [{key: value.cpu().numpy() for key, value in out.items()} for out in outputs]


def _coco_scores(ground_truth, results: list[dict], iou_type: str, names: list[str]):
    """(summary {AP..APl}, per-class AP) of one iouType; all zero without detections."""
    from pycocotools.cocoeval import COCOeval

    if not results:
        return dict.fromkeys(AP_NAMES, 0.0), dict.fromkeys(names, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints as it goes
        detections = ground_truth.loadRes(results)
        evaluator = COCOeval(ground_truth, detections, iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    summary = {
        name: (float(value) if value >= 0 else None)  # -1: no such objects in the split
        for name, value in zip(AP_NAMES, evaluator.stats[:6], strict=True)
    }
    # precision: [IoU thresholds, recall points, categories, area ranges, max detections];
    # a category's AP is the mean over IoUs and recalls at area "all", 100 detections.
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    per_class = {}
    for k, name in enumerate(names):
        values = precision[:, :, k]
        values = values[values > -1]
        per_class[name] = float(values.mean()) if values.size else None
    return summary, per_class


def evaluate_instances(
    model,
    dataset,
    device: torch.device,
    progress: bool = True,
    batch_size: int = 4,
    on_image=None,
) -> dict:
    """COCO mask and box AP of `model` on an instance `dataset` (data/coco.py, or
    data/instance_folder.py).

    on_image(index, detection): called per image with its numpy detections (overlays).
    Returns {"summary": {"mask_AP", ..., "box_APl"}, "per_class": {name: {"mask_AP", "box_AP"}},
    "results": the COCO results list}.
    """
    from pycocotools.coco import COCO

    was_training = model.training
    results: list[dict] = []
    indices = list(range(len(dataset)))
    batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    for batch in tqdm(batches, desc="evaluating", unit="batch", disable=not progress):
        images = [dataset[i][0] for i in batch]
        for index, detection in zip(batch, detect(model, images, device), strict=True):
            image_id = dataset.images[index]["id"]
            results += detections_to_results(detection, image_id, dataset.category_ids)
            if on_image is not None:
                on_image(index, detection)
    model.train(was_training)
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO()  # from the dataset: COCO JSON, or built from instance PNGs
        ground_truth.dataset = dataset.coco_ground_truth()
        ground_truth.createIndex()
    names = dataset.classes.names[1:]
    summary, per_class = {}, {name: {} for name in names}
    for iou_type, prefix in (("segm", "mask"), ("bbox", "box")):
        scores, classes = _coco_scores(ground_truth, results, iou_type, names)
        summary.update({f"{prefix}_{key}": value for key, value in scores.items()})
        for name, value in classes.items():
            per_class[name][f"{prefix}_AP"] = value
    return {"summary": summary, "per_class": per_class, "results": results}


def instance_overlay(
    image: np.ndarray, detection: dict, names: list[str], min_score: float = 0.5
) -> np.ndarray:
    """(H, W, 3) uint8: each detection scoring >= min_score in its own colour (mask blended,
    box drawn), labelled "class score"."""
    keep = np.asarray(detection["scores"]) >= min_score
    masks = np.asarray(detection["masks"]).reshape(-1, *image.shape[:2])[keep]
    out = image.astype(np.float32)
    colors = instance_colors(int(keep.sum()))
    for mask, color in zip(masks, colors, strict=True):
        inside = mask > MASK_THRESHOLD
        out[inside] = 0.5 * out[inside] + 0.5 * np.asarray(color, np.float32)
    picture = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    boxes = np.asarray(detection["boxes"])[keep]
    labels = np.asarray(detection["labels"])[keep]
    scores = np.asarray(detection["scores"])[keep]
    for box, label, score, color in zip(boxes, labels, scores, colors, strict=True):
        draw.rectangle(box.tolist(), outline=color)
        draw.text((box[0] + 1, box[1]), f"{names[label]} {score:.2f}", fill=color)
    return np.asarray(picture)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def write_instance_report(
    out_dir: Path, evaluation: dict, protocol: dict, overlays: list[tuple[str, np.ndarray]]
) -> Path:
    """out_dir/report.md (AP tables), metrics.json, results.json and overlays/NAME.png."""
    out_dir = Path(out_dir)
    (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    summary, per_class = evaluation["summary"], evaluation["per_class"]
    lines = ["# Instance segmentation report", ""]
    lines += [f"- {key}: {value}" for key, value in protocol.items()]
    lines += ["", "| | " + " | ".join(AP_NAMES) + " |", "|---" * (len(AP_NAMES) + 1) + "|"]
    for prefix in ("mask", "box"):
        values = " | ".join(_fmt(summary[f"{prefix}_{name}"]) for name in AP_NAMES)
        lines.append(f"| {prefix} | {values} |")
    lines += ["", "| class | mask AP | box AP |", "|---|---|---|"]
    for name, scores in per_class.items():
        lines.append(f"| {name} | {_fmt(scores['mask_AP'])} | {_fmt(scores['box_AP'])} |")
    lines += ["", "AP in percent (COCOeval, IoU .50:.95); - where the split has no such objects."]
    for name, picture in overlays:
        Image.fromarray(picture).save(out_dir / "overlays" / f"{name}.png")
        lines.append(f"![{name}](overlays/{name}.png)")
    metrics = {"summary": summary, "per_class": per_class}
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (out_dir / "results.json").write_text(json.dumps(evaluation["results"]))
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
