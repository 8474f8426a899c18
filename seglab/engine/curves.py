"""curves.png: training loss, learning rate and validation scores against the step, drawn from
metrics.jsonl with PIL alone (matplotlib is not a dependency).

Three panels side by side: loss (training, and validation loss as dots), learning rate, and
validation mIoU (%). The trainer rewrites the file atomically after each evaluation; the
evaluation report embeds it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from PIL import Image, ImageDraw

from seglab.atomic import write_png_atomically

CURVES = "curves.png"
PANEL = (360, 250)  # width, height of one panel in pixels
_MARGIN = (58, 16, 14, 30)  # left, right, top, bottom: room for the axis labels
_TRAIN_COLOUR, _VAL_COLOUR = (31, 80, 160), (214, 96, 20)


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl; a line cut short by a kill is skipped."""
    records = []
    path = Path(path)
    if not path.is_file():
        return records
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def curve_series(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) series of the panels: loss, val_loss, lr, val_miou (in %)."""
    series: dict[str, list[tuple[int, float]]] = {"loss": [], "val_loss": [], "lr": [], "miou": []}
    for record in records:
        step = record.get("step", 0)
        if "loss" in record:
            series["loss"].append((step, record["loss"]))
            series["lr"].append((step, record["lr"]))
        val = record.get("val")
        if val:
            if val.get("loss") is not None:
                series["val_loss"].append((step, val["loss"]))
            score = val.get("mean_iou")
            if score is not None and not math.isnan(score):
                series["miou"].append((step, 100 * score))
    return series


def _number(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.01:
        return f"{value:.1e}"
    return f"{value:.3g}"


def _panel(title: str, lines: list[tuple[list, tuple, bool]], steps: tuple[int, int]):
    """One plot: lines = [(points, colour, as dots)], x from steps[0] to steps[1]."""
    width, height = PANEL
    left, right, top, bottom = _MARGIN
    image = Image.new("RGB", PANEL, "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 1), title, fill="black")
    x0, x1, y0, y1 = left, width - right, top, height - bottom
    draw.rectangle([x0, y0, x1, y1], outline=(120, 120, 120))
    values = [v for points, _, _ in lines for _, v in points if math.isfinite(v)]
    if not values:
        draw.text((x0 + 10, (y0 + y1) // 2), "no data yet", fill=(120, 120, 120))
        return image
    low, high = min(values), max(values)
    if high - low < 1e-12:  # a flat line: give it a band to sit in
        low, high = low - 0.5 * abs(low or 1), high + 0.5 * abs(high or 1)
    first, last = steps
    span = max(last - first, 1)

    def xy(step: float, value: float) -> tuple[float, float]:
        return (
            x0 + (step - first) / span * (x1 - x0),
            y1 - (value - low) / (high - low) * (y1 - y0),
        )

    for fraction in (0.0, 0.5, 1.0):  # three labelled grid lines per axis
        value = low + fraction * (high - low)
        _, y = xy(first, value)
        draw.line([x0, y, x1, y], fill=(225, 225, 225))
        draw.text((2, y - 5), _number(value), fill="black")
        step = first + fraction * span
        x, _ = xy(step, low)
        draw.text((x - 8, y1 + 4), str(round(step)), fill="black")
    draw.text(((x0 + x1) // 2 - 10, height - 12), "step", fill=(90, 90, 90))
    for points, colour, dots in lines:
        finite = [xy(s, v) for s, v in points if math.isfinite(v)]
        if dots or len(finite) == 1:
            for x, y in finite:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        elif finite:
            draw.line(finite, fill=colour, width=2)
    return image


def draw_curves(records: list[dict]) -> Image.Image:
    """The three panels of a run's metrics records, side by side."""
    series = curve_series(records)
    all_steps = [s for points in series.values() for s, _ in points]
    steps = (0, max(all_steps)) if all_steps else (0, 1)
    panels = [
        _panel(
            "loss (line: train, dots: val)",
            [(series["loss"], _TRAIN_COLOUR, False), (series["val_loss"], _VAL_COLOUR, True)],
            steps,
        ),
        _panel("learning rate", [(series["lr"], _TRAIN_COLOUR, False)], steps),
        _panel("val mIoU (%)", [(series["miou"], _VAL_COLOUR, len(series["miou"]) < 2)], steps),
    ]
    canvas = Image.new("RGB", (PANEL[0] * len(panels), PANEL[1]), "white")
    for i, panel in enumerate(panels):
        canvas.paste(panel, (i * PANEL[0], 0))
    return canvas


def write_curves(run_dir: str | Path) -> Path:
    """Redraw RUN/curves.png from RUN/metrics.jsonl (atomically)."""
    run_dir = Path(run_dir)
    path = run_dir / CURVES
    write_png_atomically(draw_curves(read_metrics(run_dir / "metrics.jsonl")), path)
    return path


__all__ = ["CURVES", "curve_series", "draw_curves", "read_metrics", "write_curves"]
