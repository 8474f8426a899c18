"""The evaluation report: report.md and report.html (engine/report_html.py), metrics.json,
the confusion matrix as a picture, and pictures of the worst images by IoU.

Picture names mean the same in eval and predict: overlays/NAME.png is the predicted labels
blended over the image with each region outlined (what `seglab predict` writes too);
comparisons/NAME.png (eval only) is image | ground truth | prediction (| after the CRF).
"""

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
from seglab.engine.report_html import Example, html_report, image_iou


def colorize(labels: np.ndarray, colors: Sequence[tuple[int, int, int]]) -> np.ndarray:
    """(H, W) ids -> (H, W, 3) uint8 colours; 255 gets the ignore colour."""
    palette = np.zeros((256, 3), np.uint8)
    palette[: len(colors)] = colors
    palette[IGNORE_INDEX] = IGNORE_COLOR
    return palette[labels]


def as_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 -> (H, W, 3): what the pictures show."""
    if image.ndim == 2:
        image = image[..., None]
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]


def region_edges(labels: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels with a 4-neighbour of another label (the inner edge of each region)."""
    edges = np.zeros(labels.shape, bool)
    vertical, horizontal = labels[1:] != labels[:-1], labels[:, 1:] != labels[:, :-1]
    edges[1:] |= vertical
    edges[:-1] |= vertical
    edges[:, 1:] |= horizontal
    edges[:, :-1] |= horizontal
    return edges


def outline_colors(colors) -> np.ndarray:
    """(256, 3) edge colour per label: the class colour, or white for a dark one (black
    background on a dark photo), so every region's extent shows."""
    palette = colorize(np.arange(256, dtype=np.uint8), colors).astype(np.int64)
    luma = palette @ np.array([299, 587, 114]) // 1000
    palette[luma < 96] = 255
    return palette.astype(np.uint8)


def overlay(image: np.ndarray, labels: np.ndarray, colors, alpha: float = 0.5) -> np.ndarray:
    """Class colours blended over an (H, W, 3) uint8 image, each region's edge drawn opaque in
    its outline colour (outline_colors); labels (H, W) uint8."""
    blended = (1 - alpha) * as_rgb(image) + alpha * colorize(labels, colors)
    blended = blended.round().astype(np.uint8)
    edges = region_edges(labels)
    blended[edges] = outline_colors(colors)[labels[edges]]
    return blended


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
    if "boundary_f" in metrics:  # seglab/boundary_metrics.py
        lines.append(
            f"| boundary F (tolerance {metrics['boundary_tolerance_px']:g} px) | "
            f"{_fmt(metrics['boundary_f'])} |"
        )
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
    lines.append("")
    lines.append("The page with every picture embedded: report.html")
    return "\n".join(lines) + "\n"


def comparison_strip(example: Example, colors) -> Image.Image:
    """image | ground truth | prediction (| after the CRF), 4 white pixels between panels."""
    panels = [as_rgb(example.image), colorize(example.truth, colors)]
    panels.append(colorize(example.prediction, colors))
    if example.crf is not None:
        panels.append(colorize(example.crf, colors))
    gap = np.full((example.image.shape[0], 4, 3), 255, np.uint8)
    joined = [part for panel in panels for part in (panel, gap)][:-1]
    return Image.fromarray(np.concatenate(joined, axis=1))


def write_report(
    out_dir: str | Path,
    metrics: dict,
    confusion: np.ndarray,
    classes: ClassInfo,
    protocol: dict,
    overlays: Sequence[Example | tuple[str, np.ndarray, np.ndarray, np.ndarray]] = (),
    title: str = "Evaluation report",
    curves: str | Path | None = None,
) -> Path:
    """Write report.md, report.html, metrics.json, confusion_matrix.png, overlays/NAME.png and
    comparisons/NAME.png to out_dir.

    overlays: Examples in the order to show (worst first), or (name, image (H, W, 3) uint8,
    ground truth (H, W), prediction (H, W)). curves: the run's curves.png, embedded if given.
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
    matrix_picture = confusion_image(confusion, classes.names)
    write_png_atomically(matrix_picture, out_dir / "confusion_matrix.png")
    examples = [
        e
        if isinstance(e, Example)
        else Example(e[0], image_iou(e[2], e[3], len(classes.names)), *e[1:])
        for e in overlays
    ]
    for example in examples:
        write_png_atomically(
            Image.fromarray(overlay(example.image, example.prediction, classes.colors)),
            out_dir / "overlays" / f"{example.name}.png",
        )
        write_png_atomically(
            comparison_strip(example, classes.colors),
            out_dir / "comparisons" / f"{example.name}.png",
        )
    pixels = confusion.sum(axis=1)
    text = markdown_report(metrics, classes, pixels, protocol, title)
    write_text_atomically(out_dir / "report.md", text)
    curves_picture = (
        Image.open(curves).convert("RGB") if curves and Path(curves).is_file() else None
    )
    page = html_report(
        metrics,
        classes,
        pixels,
        protocol,
        title,
        matrix_picture,
        examples,
        lambda example: comparison_strip(example, classes.colors),
        curves_picture,
    )
    write_text_atomically(out_dir / "report.html", page)
    return out_dir / "report.md"
