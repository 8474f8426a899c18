"""The evaluation report: a markdown table, metrics.json, the confusion matrix as a picture,
and overlays of a few images with their ground truth and prediction."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from seglab.atomic import write_png_atomically, write_text_atomically
from seglab.data.folder import ClassInfo
from seglab.data.labels import IGNORE_COLOR, IGNORE_INDEX


def colorize(labels: np.ndarray, colors: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """(H, W) ids -> (H, W, 3) uint8 colours; 255 gets the ignore colour."""
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(colors)] = colors
    palette[IGNORE_INDEX] = IGNORE_COLOR
    return palette[labels]


def overlay(image: np.ndarray, labels: np.ndarray, colors, alpha: float = 0.5) -> np.ndarray:
    """Blend class colours over an (H, W, 3) uint8 image."""
    blended = (1 - alpha) * image + alpha * colorize(labels, colors)
    return blended.round().astype(np.uint8)


def confusion_image(matrix: np.ndarray, names: Sequence[str], cell: int = 28) -> Image.Image:
    """Row-normalised confusion matrix (rows: ground truth) as a white-to-blue heat map."""
    k = len(names)
    label_width = 6 * max(len(n) for n in names) + 10
    canvas = Image.new("RGB", (label_width + k * cell + 1, label_width + k * cell + 1), "white")
    draw = ImageDraw.Draw(canvas)
    rows = matrix.sum(axis=1, keepdims=True)
    normalized = np.divide(matrix, rows, out=np.zeros(matrix.shape, float), where=rows > 0)
    for i in range(k):
        draw.text((4, label_width + i * cell + cell // 3), names[i], fill="black")
        column_label = Image.new("RGB", (label_width, cell), "white")
        ImageDraw.Draw(column_label).text((4, cell // 3), names[i], fill="black")
        canvas.paste(column_label.rotate(90, expand=True), (label_width + i * cell, 0))
        for j in range(k):
            v = normalized[i, j]
            colour = tuple(int(255 - v * (255 - c)) for c in (31, 80, 160))
            x, y = label_width + j * cell, label_width + i * cell
            draw.rectangle([x, y, x + cell, y + cell], fill=colour, outline=(200, 200, 200))
            if v >= 0.005:
                draw.text(
                    (x + 3, y + cell // 3), f"{100 * v:.0f}", fill="white" if v > 0.5 else "black"
                )
    return canvas


def _fmt(value: float) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def markdown_report(
    metrics: dict, classes: ClassInfo, pixels: np.ndarray, protocol: dict, title: str
) -> str:
    lines = [f"# {title}", "", "## Protocol", ""]
    lines += [f"- {key}: {value}" for key, value in protocol.items()]
    lines += ["", "## Summary", "", "| metric | value (%) |", "|---|---|"]
    for key, label in (
        ("mean_iou", "mean IoU"),
        ("pixel_accuracy", "pixel accuracy"),
        ("mean_accuracy", "mean pixel accuracy"),
        ("fw_iou", "frequency-weighted IoU"),
        ("mean_dice", "mean Dice"),
    ):
        lines.append(f"| {label} | {_fmt(metrics[key])} |")
    if "crf" in metrics:
        lines.append(
            f"| mean IoU with CRF ({metrics['crf']['preset']}) | "
            f"{_fmt(metrics['crf']['mean_iou'])} |"
        )
    lines += [
        "",
        "## Per class",
        "",
        "| id | class | IoU (%) | accuracy (%) | Dice (%) | pixels |",
        "|---|---|---|---|---|---|",
    ]
    for i, name in enumerate(classes.names):
        lines.append(
            f"| {i} | {name} | {_fmt(metrics['iou'][i])} | {_fmt(metrics['accuracy'][i])} | "
            f"{_fmt(metrics['dice'][i])} | {int(pixels[i])} |"
        )
    absent = [name for i, name in enumerate(classes.names) if math.isnan(metrics["iou"][i])]
    lines.append("")
    if absent:
        lines.append(
            f"Classes absent from both ground truth and prediction ({', '.join(absent)}) have "
            "no IoU and are left out of the means."
        )
    lines.append("Confusion matrix (rows: ground truth, row-normalised %): confusion_matrix.png")
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: str | Path,
    metrics: dict,
    confusion: np.ndarray,
    classes: ClassInfo,
    protocol: dict,
    overlays: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]] = (),
    title: str = "Evaluation report",
) -> Path:
    """Write report.md, metrics.json, confusion_matrix.png and overlays/NAME.png to out_dir.

    overlays: (name, image (H, W, 3) uint8, ground truth (H, W), prediction (H, W)).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        **metrics,
        "protocol": protocol,
        "classes": classes.names,
        "confusion_matrix": confusion.tolist(),
    }
    write_text_atomically(out_dir / "metrics.json", json.dumps(payload, indent=1) + "\n")
    write_png_atomically(
        confusion_image(confusion, classes.names), out_dir / "confusion_matrix.png"
    )
    for name, image, truth, prediction in overlays:  # image | ground truth | prediction
        panels = [image, colorize(truth, classes.colors), colorize(prediction, classes.colors)]
        write_png_atomically(
            Image.fromarray(np.concatenate(panels, axis=1)), out_dir / "overlays" / f"{name}.png"
        )
    text = markdown_report(metrics, classes, confusion.sum(axis=1), protocol, title)
    write_text_atomically(out_dir / "report.md", text)
    return out_dir / "report.md"
