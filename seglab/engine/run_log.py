"""The run directory's logs, and putting them back to where a restarted run begins.

A run appends to metrics.jsonl (one JSON line per logged step and per evaluation) and to
TensorBoard's event files. A run killed with -9 restarts from its last checkpoint (or from
step 0 when it was killed before the first one), so on every start the logs are cut back to
that step and the temporary files of killed writers removed: the finished directory holds
exactly the files, and the log exactly the lines, of a run that was never interrupted.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

from seglab.atomic import remove_temporaries, write_bytes_atomically, write_text_atomically
from seglab.config import Config
from seglab.engine.curves import CURVES
from seglab.engine.run_feedback import TRAIN_LOG, truncate_train_log

METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
LEFT_BY_A_KILLED_START = (METRICS, TRAIN_LOG, CURVES, "best.safetensors", "best.yaml")
"""What a run writes before its first checkpoint (with the tensorboard folder)."""


def _logged_step(line: str) -> int | None:
    """The step of a metrics.jsonl line; None for a line cut short by a killed process."""
    try:
        return json.loads(line).get("step", 0)
    except json.JSONDecodeError:
        return None


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint a resumed run restarts from (and a last
    line half-written when the process was killed)."""
    if path.is_file():
        kept = []
        for line in path.read_text().splitlines():
            logged = _logged_step(line)
            if logged is not None and logged <= step:
                kept.append(line + "\n")
        write_text_atomically(path, "".join(kept))


def merge_events(folder: Path, step: int | None = None) -> None:
    """Rewrite the TensorBoard event files of a run as one file (under the first name) holding
    each (step, tag) once, up to `step` (None: all): the events of killed sessions, cut back
    to where the next session restarted, and no record cut short by a kill."""
    files = sorted(folder.glob("events.out.tfevents.*")) if folder.is_dir() else []
    if not files or (len(files) == 1 and step is None):
        return
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto import event_pb2
    from tensorboard.summary.writer.record_writer import RecordWriter

    kept, seen = [], set()
    for path in files:
        for record in RawEventFileLoader(str(path)).Load():
            event = event_pb2.Event.FromString(record)
            tags = tuple(value.tag for value in event.summary.value)
            key = (event.step, event.WhichOneof("what"), tags)
            if (step is None or event.step <= step) and key not in seen:
                seen.add(key)
                kept.append((event.step, record))
    buffer = io.BytesIO()
    for _, record in sorted(kept, key=lambda item: item[0]):  # stable: a step's order stays
        RecordWriter(buffer).write(record)
    write_bytes_atomically(files[0], buffer.getvalue())
    for path in files[1:]:  # a kill before this line leaves copies the next merge drops
        path.unlink()


def restart_run_dir(run_dir: Path, step: int | None, resuming: bool) -> None:
    """Put run_dir back to the state of an uninterrupted run at `step` (None: no checkpoint,
    the run starts from step 0 and whatever a killed start wrote goes)."""
    remove_temporaries(run_dir)
    if (run_dir / TENSORBOARD).is_dir():  # a kill while merging the event files
        remove_temporaries(run_dir / TENSORBOARD)
    if step is not None:
        truncate_log(run_dir / METRICS, step)
        truncate_train_log(run_dir / TRAIN_LOG, step)
        merge_events(run_dir / TENSORBOARD, step)
        return
    stale = [run_dir / name for name in LEFT_BY_A_KILLED_START if (run_dir / name).is_file()]
    if (run_dir / TENSORBOARD).is_dir():
        shutil.rmtree(run_dir / TENSORBOARD)
        stale.append(run_dir / TENSORBOARD)
    for path in stale:
        path.unlink(missing_ok=True)
    if resuming or stale:
        removed = f"; removed {', '.join(p.name for p in stale)} of the killed run" if stale else ""
        print(
            f"seglab: {run_dir / 'last.pt'} does not exist (the run stopped before its first "
            f"checkpoint): starting from step 0{removed}",
            file=sys.stderr,
        )


class RunLog:
    """metrics.jsonl and TensorBoard of rank 0; every method is a no-op on the other ranks."""

    def __init__(self, cfg: Config, run_dir: Path, is_main: bool) -> None:
        self.path = run_dir / METRICS
        self.is_main = is_main
        self.writer = None
        if is_main and cfg.train.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # optional extra: pip install 'seglab[tensorboard]'
                SummaryWriter = None
            if SummaryWriter is not None:
                self.writer = SummaryWriter(str(run_dir / TENSORBOARD))

    def _append(self, record: dict) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def train(
        self, step: int, loss: float, lr: float, images_per_s: float, terms: dict | None = None
    ) -> None:
        """terms: the loss's parts by name (an instance model's loss dict), logged beside it."""
        if not self.is_main:
            return
        parts = {key: round(value, 5) for key, value in (terms or {}).items()}
        self._append(
            {
                "step": step,
                "loss": round(loss, 5),
                **parts,
                "lr": lr,
                "images_per_s": round(images_per_s, 2),
            }
        )
        if self.writer is not None:
            self.writer.add_scalar("train/loss", loss, step)
            for key, value in parts.items():
                self.writer.add_scalar(f"train/{key}", value, step)
            self.writer.add_scalar("train/lr", lr, step)

    def val(self, step: int, summary: dict, model, val_set, device: torch.device) -> None:
        if not self.is_main:
            return
        self._append({"step": step, "val": summary})
        if self.writer is not None:
            for key, value in summary.items():
                values = value if isinstance(value, dict) else {"": value}  # class_iou: by name
                for name, number in values.items():
                    if number is not None:
                        self.writer.add_scalar(f"val/{key}/{name}".rstrip("/"), number, step)
            if getattr(model, "task", "semantic") == "semantic":  # a picture of labels
                _log_sample_prediction(self.writer, model, val_set, device, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            merge_events(Path(self.writer.log_dir))  # one file, as an uninterrupted run


@torch.no_grad()
def _log_sample_prediction(writer, model, val_set, device: torch.device, step: int) -> None:
    """TensorBoard image: the first validation image, its ground truth and the prediction."""
    from seglab.engine.report import overlay

    was_training = model.training
    model.eval()
    image, truth = val_set.load(0)
    tensor, _ = val_set[0]
    logits = model(tensor[None].to(device))
    prediction = logits.argmax(1)[0].cpu().numpy().astype("uint8")
    colors = val_set.classes.colors
    strip = np.concatenate([overlay(image, truth, colors), overlay(image, prediction, colors)], 1)
    writer.add_image("val/truth_and_prediction", strip, step, dataformats="HWC")
    model.train(was_training)
