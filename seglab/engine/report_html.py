"""report.html: one self-contained page per evaluation (every picture embedded as a data URI),
to open in any browser: the protocol, summary and per-class tables, the confusion matrix, the
run's training curves, a class legend, and the worst images by IoU first, each shown as
image | ground truth | prediction (| prediction after the CRF, where it ran).

The numbers are those of metrics.json, formatted as the markdown report formats them; each
table cell carries `data-metric` (summary) or `data-class`/`data-column` (per class), so a test
can read them back from the rendered page.
"""

from __future__ import annotations

import base64
import heapq
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

SUMMARY = (
    ("mean_iou", "mean IoU"),
    ("pixel_accuracy", "pixel accuracy"),
    ("mean_accuracy", "mean pixel accuracy"),
    ("fw_iou", "frequency-weighted IoU"),
    ("mean_dice", "mean Dice"),
)
_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f0f0f0; } td.name { text-align: left; }
.swatch { display: inline-block; width: 14px; height: 14px; border: 1px solid #444;
  vertical-align: middle; margin-right: 4px; }
.legend span.item { display: inline-block; margin: 2px 12px 2px 0; }
figure { margin: 0 0 1.5em; } figcaption { font-size: 0.9em; color: #444; }
img { max-width: 100%; image-rendering: pixelated; }
"""


def percent(value) -> str:
    """A score in % with two decimals; 'n/a' where it is undefined (NaN or missing)."""
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}"


def data_uri(picture: Image.Image | np.ndarray) -> str:
    if isinstance(picture, np.ndarray):
        picture = Image.fromarray(picture)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def image_iou(truth: np.ndarray, prediction: np.ndarray, num_classes: int) -> float:
    """Mean IoU of one image over the classes in its ground truth or prediction (labelled
    pixels only); NaN for an image without labelled pixels."""
    labelled = truth < num_classes
    t, p = truth[labelled].astype(np.int64), prediction[labelled].astype(np.int64)
    n = np.bincount(t * num_classes + p, minlength=num_classes**2).reshape(num_classes, -1)
    hits = np.diag(n)
    union = n.sum(0) + n.sum(1) - hits
    present = union > 0
    return float((hits[present] / union[present]).mean()) if present.any() else float("nan")


@dataclass
class Example:
    """One image of the report: its name, mIoU, the picture and its label maps (H, W)."""

    name: str
    iou: float
    image: np.ndarray
    truth: np.ndarray
    prediction: np.ndarray
    crf: np.ndarray | None = None
    crf_iou: float | None = None


@dataclass
class WorstImages:
    """The `keep` images of lowest mIoU seen so far (ties: the earlier image first)."""

    keep: int
    _heap: list = field(default_factory=list)  # (-iou, -order, Example): the best on top
    _seen: int = 0

    def wants(self, iou: float) -> bool:
        """Would an image of this IoU be kept? (Read the image only when it is.)"""
        score = -1.0 if math.isnan(iou) else iou  # no labelled pixel: shown first
        return self.keep > 0 and (len(self._heap) < self.keep or score < -self._heap[0][0])

    def add(self, example: Example) -> None:
        score = -1.0 if math.isnan(example.iou) else example.iou
        self._seen += 1
        entry = (-score, -self._seen, example)
        if len(self._heap) < self.keep:
            heapq.heappush(self._heap, entry)
        elif score < -self._heap[0][0]:
            heapq.heapreplace(self._heap, entry)

    def worst_first(self) -> list[Example]:
        return [e for _, _, e in sorted(self._heap, key=lambda item: (-item[0], -item[1]))]


def _legend(classes) -> str:
    items = "".join(
        f'<span class="item"><span class="swatch" style="background: rgb{tuple(color)}">'
        f"</span>{html.escape(name)}</span>"
        for name, color in zip(classes.names, classes.colors, strict=True)
    )
    return f'<div class="legend">{items}</div>'


def _summary_table(metrics: dict) -> str:
    rows = [
        f'<tr><td class="name">{label}</td><td data-metric="{key}">'
        f"{percent(metrics.get(key))}</td></tr>"
        for key, label in SUMMARY
    ]
    if "boundary_f" in metrics:  # seglab/boundary_metrics.py
        rows.append(
            f'<tr><td class="name">boundary F (tolerance {metrics["boundary_tolerance_px"]:g} '
            f'px)</td><td data-metric="boundary_f">{percent(metrics["boundary_f"])}</td></tr>'
        )
    if "crf" in metrics:
        crf = metrics["crf"]
        rows.append(
            f'<tr><td class="name">mean IoU with CRF ({html.escape(str(crf["preset"]))})</td>'
            f'<td data-metric="crf.mean_iou">{percent(crf["mean_iou"])}</td></tr>'
        )
    return "<table><tr><th>metric</th><th>value (%)</th></tr>" + "".join(rows) + "</table>"


def _class_table(metrics: dict, classes, pixels: np.ndarray) -> str:
    columns = [("iou", "IoU"), ("accuracy", "accuracy"), ("dice", "Dice")]
    head = "".join(f"<th>{label} (%)</th>" for _, label in columns)
    crf = metrics.get("crf")
    head += "<th>IoU with CRF (%)</th>" if crf else ""
    rows = []
    for i, (name, color) in enumerate(zip(classes.names, classes.colors, strict=True)):
        cells = "".join(
            f'<td data-class="{i}" data-column="{key}">{percent(metrics[key][i])}</td>'
            for key, _ in columns
        )
        if crf:
            cells += f'<td data-class="{i}" data-column="crf.iou">{percent(crf["iou"][i])}</td>'
        rows.append(
            f'<tr><td>{i}</td><td class="name"><span class="swatch" style="background: '
            f'rgb{tuple(color)}"></span>{html.escape(name)}</td>{cells}'
            f'<td data-class="{i}" data-column="pixels">{int(pixels[i])}</td></tr>'
        )
    return (
        f"<table><tr><th>id</th><th>class</th>{head}<th>pixels</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _examples(examples: Sequence[Example], strip) -> str:
    if not examples:
        return "<p>No images kept (num_overlays 0).</p>"
    parts = []
    for example in examples:
        crf = "" if example.crf is None else f", after the CRF {percent(example.crf_iou)}"
        panels = "image | ground truth | prediction" + (" | after CRF" if crf else "")
        name = html.escape(example.name)
        parts.append(
            f'<figure data-image="{name}"><img alt="{name}" src="{data_uri(strip(example))}">'
            f"<figcaption>{name}: image mIoU {percent(example.iou)}{crf} ({panels})"
            "</figcaption></figure>"
        )
    return "".join(parts)


def html_report(
    metrics: dict,
    classes,
    pixels: np.ndarray,
    protocol: dict,
    title: str,
    confusion: Image.Image,
    examples: Sequence[Example],
    strip,
    curves: Image.Image | None = None,
) -> str:
    """The page. strip(example) -> the picture of one example (engine/report.py draws it)."""
    protocol_items = "".join(
        f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>" for k, v in protocol.items()
    )
    absent = [n for i, n in enumerate(classes.names) if math.isnan(metrics["iou"][i])]
    absent_note = (
        "<p>Classes absent from both ground truth and prediction "
        f"({html.escape(', '.join(absent))}) have no IoU and are left out of the means.</p>"
        if absent
        else ""
    )
    curves_part = (
        f'<h2>Training curves</h2><img alt="training curves" src="{data_uri(curves)}">'
        if curves is not None
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<link rel="icon" href="data:,"><style>{_STYLE}</style></head>
<body><h1>{html.escape(title)}</h1>
<h2>Protocol</h2><ul>{protocol_items}</ul>
<h2>Summary</h2>{_summary_table(metrics)}
<h2>Per class</h2>{_class_table(metrics, classes, pixels)}{absent_note}
<h2>Confusion matrix</h2><p>Rows: ground truth, row-normalised %.</p>
<img alt="confusion matrix" src="{data_uri(confusion)}">
{curves_part}
<h2>Images, worst mean IoU first</h2>{_legend(classes)}{_examples(examples, strip)}
</body></html>
"""


__all__ = ["Example", "WorstImages", "data_uri", "html_report", "image_iou", "percent"]
