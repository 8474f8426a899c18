"""Mask R-CNN (ResNet-18 FPN, from scratch) on the shapes data with instances: COCO mask and box
AP after a training run timed on this machine's CPU (issue 16.7: mask AP50 >= 0.8 in < 20 min).

    OMP_NUM_THREADS=2 python benchmarks/maskrcnn_shapes.py [--config configs/maskrcnn_shapes.yaml]
    python benchmarks/maskrcnn_shapes.py --record runs/maskrcnn_shapes [--no-write]

The first form runs the real commands, `seglab train CONFIG` (timed from start to exit) and
`seglab eval RUN` (COCO AP of the run's best weights on the val split, pycocotools), generating
the data first if the config's data.root is missing (`seglab data shapes ROOT --instances`).
--record writes the section of a run already made through those commands: the training time is
then the span of the run's train.log (its first line is written before the first step, its
last when training has ended, evaluations included), and the scores come from RUN/report/
metrics.json (`seglab eval RUN`). Writes the "Mask R-CNN on shapes (CPU)" section of
benchmarks/RESULTS.md (--no-write: print only).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from results_file import write_section  # benchmarks/, the script's folder, is on sys.path

from seglab.config import load_config

HEADING = "## Mask R-CNN on shapes (CPU)"
SEGLAB = [sys.executable, "-m", "seglab"]
NAMES = ("AP", "AP50", "AP75", "APs")


def log_span_seconds(train_log: Path) -> float:
    """Seconds from the first to the last line of a run's train.log ("YYYY-mm-dd HH:MM:SS ...")."""
    lines = train_log.read_text().splitlines()
    stamps = [datetime.strptime(line[:19], "%Y-%m-%d %H:%M:%S") for line in (lines[0], lines[-1])]
    return (stamps[1] - stamps[0]).total_seconds()


def run_commands(config: str) -> tuple[Path, float, list[str]]:
    """Train and evaluate through the CLI; (run dir, training seconds, the commands)."""
    cfg = load_config(config)
    root, run_dir = Path(cfg.data.root), Path(cfg.run_dir)
    commands = []
    if not (root / "annotations").is_dir():
        commands.append([*SEGLAB, "data", "shapes", str(root), "--instances"])
        subprocess.run(commands[-1], check=True)
    commands.append([*SEGLAB, "--quiet", "train", config])
    start = time.perf_counter()
    subprocess.run(commands[-1], check=True)
    seconds = time.perf_counter() - start
    commands.append([*SEGLAB, "eval", str(run_dir)])
    subprocess.run(commands[-1], check=True, stdout=subprocess.DEVNULL)
    return run_dir, seconds, commands


def section(run_dir: Path, seconds: float, how: str) -> str:
    cfg = load_config(str(run_dir / "config.yaml"))
    metrics = json.loads((run_dir / "report" / "metrics.json").read_text())
    summary, per_class = metrics["summary"], metrics["per_class"]
    options = ", ".join(f"{k}={v}" for k, v in cfg.model.options.items())
    train_size = sum(1 for _ in (Path(cfg.data.root) / "train.txt").open())
    val_size = sum(1 for _ in (Path(cfg.data.root) / "val.txt").open())
    threads = cfg.train.threads or os.cpu_count()
    lines = [
        HEADING,
        "",
        f"`{cfg.model.name}` ({options}), from scratch; {cfg.optim.name} lr {cfg.optim.lr}, "
        f"{cfg.optim.warmup_iters} warm-up steps, x {cfg.optim.gamma} at "
        f"{cfg.optim.milestones}, {cfg.train.iters} steps at batch {cfg.data.batch_size}; "
        f"shapes with instances, {train_size} train / {val_size} val scenes of 64x64, "
        f"{threads} CPU thread(s). COCO AP (pycocotools) of the run's best weights on val, "
        "in percent.",
        "",
        f"Training time: **{seconds / 60:.1f} min** ({seconds:.0f} s, {how}).",
        "",
        "| | " + " | ".join(NAMES) + " |",
        "|---" * (len(NAMES) + 1) + "|",
    ]
    for prefix in ("mask", "box"):
        values = (summary[f"{prefix}_{name}"] for name in NAMES)
        lines.append(f"| {prefix} | " + " | ".join(_percent(v) for v in values) + " |")
    lines += ["", "| class | mask AP | box AP |", "|---|---|---|"]
    for name, scores in per_class.items():
        lines.append(f"| {name} | {_percent(scores['mask_AP'])} | {_percent(scores['box_AP'])} |")
    return "\n".join(lines) + "\n"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/maskrcnn_shapes.yaml")
    parser.add_argument("--record", metavar="RUN", help="a run made by seglab train + eval")
    parser.add_argument(
        "--wall-seconds",
        type=float,
        help="with --record: the train command's wall clock as the caller measured it",
    )
    parser.add_argument("--no-write", action="store_true", help="print, leave RESULTS.md")
    args = parser.parse_args()
    if args.record:
        run_dir = Path(args.record)
        seconds = log_span_seconds(run_dir / "train.log")
        how = (
            f"the span of {run_dir}/train.log of `seglab train {args.config}`, scores from "
            f"`seglab eval {run_dir}`; recorded with "
            f"`{shlex.join(['python', 'benchmarks/maskrcnn_shapes.py', *sys.argv[1:]])}`"
        )
        if args.wall_seconds:
            how += f"; the whole train command took {args.wall_seconds:.0f} s wall clock"
    else:
        run_dir, seconds, commands = run_commands(args.config)
        shown = "; ".join(shlex.join(["seglab", *c[3:]]) for c in commands)
        how = f"`{shown}`, via `python benchmarks/maskrcnn_shapes.py --config {args.config}`"
    text = section(run_dir, seconds, how)
    print(text)
    if not args.no_write:
        write_section(HEADING, text)


if __name__ == "__main__":
    main()
