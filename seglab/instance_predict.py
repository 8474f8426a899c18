"""Instance predictions from weights of task "instance" (Mask R-CNN): InstanceSegmenter, the
sibling of inference.Segmenter, and what `seglab predict` and `seglab eval` do for such weights.

    segmenter = InstanceSegmenter.from_checkpoint("runs/maskrcnn_shapes")
    found = segmenter.predict(image)          # (H, W, 3) uint8 RGB
    found.masks, found.boxes, found.labels, found.scores, found.names
    labels = found.semantic(segmenter.num_classes)   # a semantic map from the instances
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seglab.errors import SeglabError, first_line


@dataclass
class Instances:
    """One image's detections scoring at least the segmenter's min_score, best first.

    masks (N, H, W) bool, boxes (N, 4) float x1y1x2y2 pixels, labels (N,) int (0 is the
    background, never predicted), scores (N,) float, names: the class name of each.
    """

    masks: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    names: list[str]

    def semantic(self, num_classes: int) -> np.ndarray:
        """(H, W) uint8 labels: each pixel the class of the highest-scoring instance on it
        (painted lowest score first), 0 where there is none."""
        labels = np.zeros(self.masks.shape[1:], np.uint8)
        for index in np.argsort(self.scores, kind="stable"):
            labels[self.masks[index]] = self.labels[index]
        return labels


class InstanceSegmenter:
    """A loaded instance model: predict(image) -> Instances."""

    def __init__(self, model, classes=None, device="auto", min_score: float = 0.5) -> None:
        from seglab.device import resolve_device

        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.classes = classes
        self.min_score = min_score
        count = model.seglab_spec["num_classes"]
        self.names = list(classes.names) if classes else [str(i) for i in range(count)]

    @classmethod
    def from_checkpoint(cls, path, device="auto", min_score: float = 0.5) -> InstanceSegmenter:
        """From a run directory or NAME.safetensors of an instance model."""
        from seglab.data.folder import ClassInfo
        from seglab.runs import resolve_run
        from seglab.weights import load_weights

        weights, _ = resolve_run(path)
        model, meta = load_weights(weights, task="instance")
        recorded = meta.get("classes")
        classes = None
        if recorded:
            classes = ClassInfo(
                [c["name"] for c in recorded], [tuple(c["color"]) for c in recorded]
            )
        return cls(model, classes, device, min_score)

    @property
    def num_classes(self) -> int:
        return self.model.seglab_spec["num_classes"]

    def detect(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """The model's raw detections (all scores) of an (H, W, 3) uint8 image, as numpy."""
        from seglab.engine.instance_eval import detect
        from seglab.inference import as_image_tensor

        tensor = as_image_tensor(image).float() / 255
        return detect(self.model, [tensor], self.device)[0]

    def predict(self, image: np.ndarray) -> Instances:
        raw = self.detect(image)
        keep = raw["scores"] >= self.min_score
        labels = raw["labels"][keep]
        return Instances(
            masks=raw["masks"][keep, 0] > 0.5,
            boxes=raw["boxes"][keep],
            labels=labels,
            scores=raw["scores"][keep],
            names=[self.names[label] for label in labels],
        )


def predict_instance_files(
    weights: Path,
    images: Sequence[tuple[Path, Path]],
    out: str | Path,
    progress: bool = True,
    min_score: float = 0.5,
):
    """OUT/results.json (COCO results: every detection, image_id = position in `images`
    from 1, file_name beside it) and OUT/overlays/NAME.png (instances scoring >= min_score,
    one colour each, labelled with class and score). Returns seglab.predict.Predictions."""
    from PIL import Image
    from tqdm import tqdm

    from seglab.atomic import write_png_atomically, write_text_atomically
    from seglab.data.folder import read_image
    from seglab.engine.instance_eval import detections_to_results, instance_overlay
    from seglab.predict import Predictions

    segmenter = InstanceSegmenter.from_checkpoint(weights, "auto", min_score)
    # The contiguous labels are the category ids of a results file: label 1 is id 1.
    category_ids = list(range(1, segmenter.num_classes))
    out_dir = Path(out)
    result, entries = Predictions(), []
    for image_id, (path, name) in enumerate(
        tqdm(images, desc="predicting", unit="img", disable=not progress), start=1
    ):
        try:
            image = read_image(path)
            raw = segmenter.detect(image)
        except SeglabError as error:
            result.failed.append((path, str(error)))
            continue
        except RuntimeError as error:
            reason = first_line(error, "no message")
            result.failed.append(
                (path, f"{path}: cannot predict ({type(error).__name__}: {reason})")
            )
            continue
        entries += detections_to_results(raw, image_id, category_ids, str(name))
        overlay_path = out_dir / "overlays" / f"{name}.png"
        overlay_path.parent.mkdir(parents=True, exist_ok=True)
        picture = instance_overlay(image, raw, segmenter.names, min_score)
        write_png_atomically(Image.fromarray(picture), overlay_path)
        result.written.append(overlay_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    result.results = out_dir / "results.json"
    write_text_atomically(result.results, json.dumps(entries))
    return result


def evaluate_instance_checkpoint(
    checkpoint,
    data_root=None,
    split=None,
    out=None,
    num_overlays=6,
    progress=True,
    data_format=None,
):
    """COCO mask and box AP of instance weights on a COCO-format split, and the report
    (report.md with per-class AP, metrics.json, results.json, overlays). Returns (summary and
    per-class metrics, report path)."""
    from seglab.data.folder import check_dataset
    from seglab.engine.instance_eval import evaluate_instances, instance_overlay
    from seglab.engine.instance_eval import write_instance_report as write
    from seglab.runs import resolve_run, run_dataset
    from seglab.weights import load_weights

    weights, config = resolve_run(checkpoint)
    dataset = run_dataset(config, data_root, split, data_format or (None if config else "coco"))
    if getattr(dataset, "task", "semantic") != "instance":
        raise SeglabError(
            f"{weights} is an instance model; evaluate it on COCO-format data (--format coco)"
        )
    dataset.transform = None  # the model resizes and normalises its inputs itself
    check_dataset(dataset, progress)
    model, meta = load_weights(weights, task="instance")
    if meta["num_classes"] != dataset.num_classes:
        raise SeglabError(
            f"{weights}: model has {meta['num_classes']} classes (with the background) but "
            f"{dataset.annotation_path} has {dataset.num_classes}; evaluate it on its own data"
        )
    segmenter = InstanceSegmenter(model, dataset.classes)
    overlays = []

    def on_image(index, detection):
        if len(overlays) < num_overlays:
            image = dataset.load(index)[0]
            picture = instance_overlay(image, detection, dataset.classes.names)
            overlays.append((dataset.names[index], picture))

    evaluation = evaluate_instances(model, dataset, segmenter.device, progress, on_image=on_image)
    protocol = {
        "checkpoint": str(weights),
        "model": f"{meta['name']} {meta.get('options', {})}",
        "dataset": f"{dataset.annotation_path} ({len(dataset)} images)",
        "protocol": "COCOeval, segm and bbox, 100 detections per image",
    }
    report = write(Path(out) if out else weights.parent / "report", evaluation, protocol, overlays)
    return {"summary": evaluation["summary"], "per_class": evaluation["per_class"]}, report


__all__ = [
    "InstanceSegmenter",
    "Instances",
    "evaluate_instance_checkpoint",
    "predict_instance_files",
]
