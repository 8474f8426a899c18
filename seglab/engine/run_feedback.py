"""What a training run tells its user: the start-up summary, train.log, the evaluation during
training (scores, validation loss, per-class IoU), the best step, the closing message.

train.log holds every line the console shows (not the progress bar), each stamped with the
time and the step it belongs to: `2026-12-01 10:00:00 [step 3] step 3: val mIoU 45.12 ...`.
The stamp is what lets a resumed run cut the log back to its checkpoint, as metrics.jsonl is
(engine/run_log.py): a run killed with -9 and resumed keeps the lines up to the checkpoint,
then its own start-up summary and "resumed from step N". So the file of a resumed run differs
from an uninterrupted run's by that second summary only (and the times).
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from seglab.atomic import write_text_atomically
from seglab.data.labels import IGNORE_INDEX

TRAIN_LOG = "train.log"
BEST_WEIGHTS = "best.safetensors"
_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[step (\d+)\] ")
_SCORE_NAMES = {"mean_iou": "mIoU", "mask_AP": "mask AP"}


class Console:
    """The lines a run prints: to the console (when `echo`) and to RUN/train.log (rank 0)."""

    def __init__(self, run_dir: Path, is_main: bool, echo: bool) -> None:
        self.path = Path(run_dir) / TRAIN_LOG
        self.is_main, self.echo = is_main, echo and is_main

    def say(self, step: int, text: str) -> None:
        if not self.is_main:
            return
        if self.echo:
            tqdm.write(text)  # above the progress bar, which stays at the bottom
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with self.path.open("a") as handle:
            handle.writelines(f"{stamp} [step {step}] {line}\n" for line in text.splitlines())


def truncate_train_log(path: Path, step: int) -> None:
    """Keep the train.log lines of steps <= `step` (what a run resumed there had printed);
    a line cut short by a kill has no newline and goes too."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines(keepends=True):
        stamped = _STAMP.match(line)
        if stamped and line.endswith("\n") and int(stamped.group(1)) <= step:
            kept.append(line)
    write_text_atomically(path, "".join(kept))


def _short_list(names, limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def startup_summary(
    cfg, model, train_set, val_set, device, world, run_dir: Path, amp: torch.dtype | None = None
) -> str:
    """What is about to be trained, on what, where: the first lines of every run. `amp`: the
    autocast dtype the training steps use (None: off, also where amp was asked for but the
    CPU has no native bf16)."""
    from seglab.models import count_parameters

    options = ", ".join(f"{k}={v}" for k, v in cfg.model.options.items())
    total = count_parameters(model, learnable_only=False)
    learnable = count_parameters(model)
    names = list(train_set.classes.names)
    crop = cfg.data.crop_size
    threads = torch.get_num_threads()
    return "\n".join(
        [
            f"model: {cfg.model.name}({options}) - {learnable:,} trainable parameters"
            + (f" of {total:,}" if total != learnable else ""),
            f"classes: {len(names)} ({_short_list(names)})",
            f"data: {cfg.data.root} ({cfg.data.format}): {len(train_set)} train images "
            f"({cfg.data.train_split}), {len(val_set)} val images ({cfg.data.val_split}), "
            f"batch {cfg.data.batch_size}" + (f", crop {crop[0]}x{crop[1]}" if crop else ""),
            f"device: {device}, {threads} CPU thread(s), {world.size} process(es)"
            + (f", amp {str(amp).removeprefix('torch.')}" if amp is not None else ""),
            f"schedule: {cfg.train.iters} steps, evaluating every {cfg.train.eval_every}, "
            f"checkpoint every {cfg.train.checkpoint_every}",
            f"run dir: {Path(run_dir).resolve()}",
        ]
    )


@torch.no_grad()
def evaluate_semantic(cfg, world, device, model, val_set) -> dict:
    """The scores of an evaluation during training (each rank a shard of val):
    metrics.compute()'s scalars, `loss` (the validation loss: mean cross-entropy of the
    evaluated class probabilities over the labelled pixels; the inference settings of
    cfg.inference apply), `boundary_f` (seglab/boundary_metrics.py, 2 px; None without any
    border) and `class_iou` {class name: IoU, None where undefined}."""
    from seglab.boundary_metrics import BoundaryFScore
    from seglab.engine.evaluate import evaluate

    nll = torch.zeros(2, dtype=torch.float64, device=device)  # sum of -log p, labelled pixels
    boundary = BoundaryFScore(val_set.num_classes)  # its default tolerance, 2 px

    def add_loss(indices, images, masks, probs) -> None:
        boundary.update(probs.argmax(1), masks)
        labelled = masks != IGNORE_INDEX
        target = torch.where(labelled, masks, torch.zeros_like(masks)).long()
        picked = probs.gather(1, target[:, None])[:, 0].clamp_min(1e-12)
        nll[0] += -picked.log()[labelled].double().sum()
        nll[1] += labelled.sum()

    shard = range(world.rank, len(val_set), world.size)
    confusion = evaluate(
        model, val_set, device, cfg.inference, progress=False, indices=shard, on_batch=add_loss
    )
    if world.distributed:
        torch.distributed.all_reduce(nll)
        boundary.all_reduce()
    scores = confusion.compute()
    summary = {k: v for k, v in scores.items() if not isinstance(v, (list, dict))}
    bf = boundary.compute()
    summary["boundary_f"] = None if math.isnan(bf) else bf
    summary["loss"] = (nll[0] / nll[1]).item() if nll[1] > 0 else None
    summary["class_iou"] = {
        name: None if math.isnan(iou) else iou
        for name, iou in zip(val_set.classes.names, scores["iou"], strict=True)
    }
    return summary


def eval_line(step: int, scores: dict, score_key: str, best: bool) -> str:
    """`step 3: val mIoU 45.12, loss 0.4312 (best)` for the console and train.log."""
    name = _SCORE_NAMES.get(score_key, score_key)
    text = f"step {step}: val {name} {100 * scores[score_key]:.2f}"
    if scores.get("loss") is not None:
        text += f", loss {scores['loss']:.4f}"
    return text + (" (best so far)" if best else "")


def best_meta(step: int, score_key: str, score: float) -> dict:
    """What best.yaml records beside the model (save_weights' extra): `best: {step, mean_iou}`."""
    return {"best": {"step": step, score_key: round(float(score), 6)}}


def read_best_step(run_dir: Path) -> int | None:
    """The step of the run's best.safetensors, from best.yaml (None: no best yet)."""
    from seglab.weights import weights_meta_path

    path = weights_meta_path(Path(run_dir) / BEST_WEIGHTS)
    if not path.is_file():
        return None
    best = (yaml.safe_load(path.read_text()) or {}).get("best") or {}
    return best.get("step")


def closing_message(run_dir: Path, step: int, iters: int, best_step, score_key, best) -> str:
    name = _SCORE_NAMES.get(score_key, score_key)
    run_dir = Path(run_dir)
    if best_step is None:
        best_text = "no evaluation yet"
    else:
        best_text = f"best val {name} {100 * best:.2f} at step {best_step} ({BEST_WEIGHTS})"
    if step < iters:
        return (
            f"stopped at step {step} of {iters}: {best_text}; continue with --resume "
            f"({run_dir / 'last.pt'})"
        )
    return f"done: {best_text}; final.safetensors, train.log, curves.png in {run_dir}"


__all__ = [
    "TRAIN_LOG",
    "Console",
    "closing_message",
    "eval_line",
    "evaluate_semantic",
    "read_best_step",
    "best_meta",
    "startup_summary",
    "truncate_train_log",
]
