"""Shared helper of the per-model "short training beats chance" tests (not a test module)."""

from __future__ import annotations

import json
from pathlib import Path

from seglab.config import load_config
from seglab.engine.trainer import train


def short_training_scores(
    shapes_root: Path,
    run_dir: Path,
    name: str,
    options: str,
    iters: int = 60,
    lr: float = 3e-3,
    *overrides: str,
) -> dict:
    """Train `name` on the 32x32 shapes set (6 classes) and return the final val scores.

    AdamW and batch 8 as in tests/test_deeplab.py, with median-frequency class weights so that
    the small object classes are not ignored in favour of the background. Scored on the 24
    training images: it checks that the model learns (every part trains, the geometry is
    right) in seconds; generalising from 24 scenes takes a few hundred steps more.
    """
    cfg = load_config(
        None,
        [
            f"data.root={shapes_root}",
            f"run_dir={run_dir}",
            f"model.name={name}",
            f"model.options={options}",
            "optim.name=adamw",
            f"optim.lr={lr}",
            "optim.weight_decay=0.0",
            "data.batch_size=8",
            f"train.iters={iters}",
            f"train.eval_every={iters}",
            "train.log_every=10",
            "train.checkpoint_every=1000",
            "loss.class_weights=median_frequency",
            "data.val_split=train",
            "data.hflip=false",
            *overrides,
        ],
    )
    run_dir = train(cfg, progress=False)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["val"] for r in records if "val" in r][-1]
