"""Evaluate a trained run (or weights file) on a dataset split and write its report; search the
dense CRF's appearance kernel on a run's validation images. What `seglab eval` and
`seglab crf-search` call, usable from Python with the same behaviour.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from seglab.boundary_metrics import DEFAULT_TOLERANCE, BoundaryFScore
from seglab.config import InferenceConfig
from seglab.data.folder import check_dataset
from seglab.device import resolve_device
from seglab.engine.evaluate import evaluate
from seglab.engine.report import write_report
from seglab.engine.report_html import Example, WorstImages, image_iou
from seglab.errors import SeglabError
from seglab.fast_inference import prepare_for_inference
from seglab.inference import predict_probabilities
from seglab.metrics import ConfusionMatrix
from seglab.runs import check_window, resolve_run, run_dataset, run_inference
from seglab.weights import load_weights, read_weights_meta


def _check_classes(weights: Path, meta: dict, dataset) -> None:
    if meta["num_classes"] != dataset.num_classes:
        raise SeglabError(
            f"{weights}: model has {meta['num_classes']} classes but {dataset.root} has "
            f"{dataset.num_classes}; evaluate it on the dataset it was trained for"
        )


def evaluate_checkpoint(
    checkpoint: str | Path,
    data_root: str | Path | None = None,
    split: str | None = None,
    out: str | Path | None = None,
    inference: InferenceConfig | Mapping[str, Any] | None = None,
    crf: str | None = None,
    num_overlays: int = 6,
    progress: bool = True,
    data_format: str | None = None,
    variant: str = "auto",
    backend: str = "torch",
    boundary_tolerance: float = DEFAULT_TOLERANCE,
) -> tuple[dict, Path]:
    """Evaluate weights (a run directory or NAME.safetensors) and write the report.

    data_root, split, data_format default to the run's config (its val split). inference: None
    uses the run's inference section; a mapping overrides only the fields it names; an
    InferenceConfig replaces it (seglab.runs.run_inference). crf: a seglab.crf preset name; its
    mIoU is reported beside the network's. The report goes to `out`, by default report/ beside
    the weights; it shows the num_overlays images of lowest mIoU, worst first (with the CRF's
    labels too where it ran), and the run's curves.png when there is one. variant, backend: how
    the model runs (seglab/fast_inference.py); the one chosen is in the report's protocol and in
    metrics["inference_variant"]. The boundary F-score (seglab/boundary_metrics.py) within
    boundary_tolerance pixels is metrics["boundary_f"] (tolerance: "boundary_tolerance_px").
    Returns (metrics, report.md path; report.html beside it).
    """
    weights, config = resolve_run(checkpoint)
    if read_weights_meta(weights).get("task") == "instance":  # Mask R-CNN: COCO mask/box AP
        from seglab.instance_predict import evaluate_instance_checkpoint

        return evaluate_instance_checkpoint(
            weights, data_root, split, out, num_overlays, progress, data_format
        )
    inference = run_inference(config, inference)
    dataset = run_dataset(config, data_root, split, data_format)
    check_dataset(dataset, progress)
    model, meta = load_weights(weights)
    _check_classes(weights, meta, dataset)
    device = resolve_device("auto")
    model.to(device)
    check_window(model, inference)
    worst = WorstImages(num_overlays)
    crf_confusion = ConfusionMatrix(dataset.num_classes, device) if crf else None
    k = dataset.num_classes
    boundary = BoundaryFScore(k, boundary_tolerance)

    def on_batch(indices, images, masks, probs):
        boundary.update(probs.argmax(1), masks)
        predictions = probs.argmax(1).cpu().numpy().astype(np.uint8)
        refined = None
        if crf_confusion is not None:
            from seglab.crf import dense_crf_labels

            raw = torch.stack(
                [torch.from_numpy(dataset.load(i)[0]).permute(2, 0, 1) for i in indices]
            ).to(device)
            refined = dense_crf_labels(probs, raw, preset=crf)
            crf_confusion.update(refined, masks)
            refined = refined.cpu().numpy().astype(np.uint8)
        for i, index in enumerate(indices):
            truth = masks[i].cpu().numpy()
            iou = image_iou(truth, predictions[i], k)
            if worst.wants(iou):  # the picture is read only for the images kept
                after = None if refined is None else refined[i]
                example = Example(
                    dataset.names[index], iou, dataset.load(index)[0], truth, predictions[i]
                )
                if after is not None:
                    example.crf, example.crf_iou = after, image_iou(truth, after, k)
                worst.add(example)

    runner, described = prepare_for_inference(model, device, variant, backend)
    with torch.inference_mode():
        confusion = evaluate(runner, dataset, device, inference, progress, on_batch=on_batch)
    metrics = confusion.compute()
    metrics["boundary_f"] = boundary.compute()
    metrics["boundary_tolerance_px"] = boundary_tolerance
    protocol = {
        "checkpoint": str(weights),
        "model": f"{meta['name']} {meta.get('options', {})}",
        "dataset": f"{dataset.root} split {dataset.split} ({len(dataset)} images)",
        "mode": inference.mode + (f" crop {inference.crop_size}" if inference.crop_size else ""),
        "scales": inference.scales,
        "flip": inference.flip,
        "crf": crf or "none",
        "inference variant": described,
    }
    if crf_confusion is not None:
        metrics["crf"] = {"preset": crf, **crf_confusion.compute()}
    out_dir = Path(out) if out else weights.parent / "report"
    curves = weights.parent / "curves.png"  # drawn by the trainer in the run directory
    report = write_report(
        out_dir,
        metrics,
        confusion.matrix.cpu().numpy(),
        dataset.classes,
        protocol,
        worst.worst_first(),
        curves=curves if curves.is_file() else None,
    )
    metrics["inference_variant"] = described
    return metrics, report


def search_crf(
    checkpoint: str | Path,
    w1: list[float],
    theta_alpha: list[float],
    theta_beta: list[float],
    preset: str = "deeplab-largefov",
    images: int = 100,
    data_root: str | Path | None = None,
    split: str | None = None,
    data_format: str | None = None,
    progress: bool = True,
):
    """DeepLab's CRF cross-validation: grid-search w1, theta_alpha, theta_beta on the first
    `images` images of the run's val split (w2, theta_gamma and iterations from `preset`).

    The network's probabilities come from the run's inference settings, as in evaluation.
    Returns (mIoU of the network alone, [(DenseCRFParams, mIoU), ...] best first, the number
    of images searched on).
    """
    from seglab.crf.search import grid_search

    weights, config = resolve_run(checkpoint)
    inference = run_inference(config)
    dataset = run_dataset(config, data_root, split, data_format)
    model, meta = load_weights(weights)
    _check_classes(weights, meta, dataset)
    check_window(model, inference)
    model.eval()
    probs, pictures, labels = [], [], []
    count = min(images, len(dataset))
    for index in tqdm(range(count), desc="network predictions", disable=not progress):
        image, mask = dataset[index]
        probs.append(predict_probabilities(model, image[None], inference)[0])
        pictures.append(torch.from_numpy(dataset.load(index)[0]).permute(2, 0, 1))
        labels.append(mask)
    results = grid_search(
        probs, pictures, labels, meta["num_classes"], w1, theta_alpha, theta_beta, preset
    )
    baseline = ConfusionMatrix(meta["num_classes"])
    for prob, mask in zip(probs, labels, strict=True):
        baseline.update(prob.argmax(0)[None], mask[None])
    return baseline.compute()["mean_iou"], results, count


__all__ = ["evaluate_checkpoint", "search_crf"]
