"""Val scores of training runs, read back from RUN/metrics.jsonl (the trainer's val records).

A benchmark that trains two arms side by side on a shared, busy CPU can record the latest step
both arms were evaluated at (train.eval_every) when the full schedule does not fit in the time
there is; the record then says which step it is."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path


def val_scores(run_dir: Path, classes: Sequence[str]) -> dict[int, dict]:
    """step -> {"mean_iou", "iou" (per class, in `classes` order; None: class absent)}."""
    scores = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if "val" in record:
            per_class = record["val"]["class_iou"]
            scores[record["step"]] = {
                "mean_iou": record["val"]["mean_iou"],
                "iou": [per_class.get(name) for name in classes],
            }
    return scores


def latest_common_step(run_dirs: dict[str, Path], classes: Sequence[str]) -> tuple[int, dict]:
    """The last step every run was evaluated at, and each run's scores there; (0, {}) when
    there is none yet (or a run has not started)."""
    if not all((Path(path) / "metrics.jsonl").is_file() for path in run_dirs.values()):
        return 0, {}
    scores = {arm: val_scores(path, classes) for arm, path in run_dirs.items()}
    common = set.intersection(*(set(s) for s in scores.values()))
    if not common:
        return 0, {}
    step = max(common)
    return step, {arm: s[step] for arm, s in scores.items()}


def iou_table(rows: dict[str, dict], classes: Sequence[str], first: str) -> list[str]:
    """Markdown lines: one row per run (label -> {"mean_iou", "iou"}), mIoU and per-class
    IoU in %, '-' for a class absent from val."""
    lines = [
        f"| {first} | mIoU | " + " | ".join(classes) + " |",
        "|---|---:|" + "---:|" * len(classes),
    ]
    for label, scores in rows.items():
        per_class = " | ".join("-" if v is None else f"{100 * v:.1f}" for v in scores["iou"])
        lines.append(f"| {label} | {100 * scores['mean_iou']:.2f} | {per_class} |")
    return lines


def run_command(script: str) -> str:
    """This run's command line for the record; with --record-only, the training command
    (without it) followed by the recording one (whether the runs stopped early, the section
    says by the step it names)."""
    args = [a for a in sys.argv[1:] if a != "--no-write"]
    command = shlex.join(["python", script, *args])
    if "--record-only" not in args:
        return command
    trained = shlex.join(["python", script, *(a for a in args if a != "--record-only")])
    return f"{trained}`, recorded from its runs' evaluation logs by `{command}"
