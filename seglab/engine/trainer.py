"""The training loop: iteration-based, resumable to the bit, evaluating as it goes.

Reads top to bottom: data, model, loss, optimizer, resume, then the loop. Everything a run
produces goes to cfg.run_dir: config.yaml, metrics.jsonl, last.pt (resume state),
best.safetensors / final.safetensors (+ .yaml) for inference.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from seglab.config import Config, save_config
from seglab.data import build_dataset
from seglab.data.folder import FolderDataset, check_dataset
from seglab.data.transforms import eval_transform, train_transform
from seglab.engine.checkpoint import (
    load_resume,
    load_state_checked,
    save_resume,
    save_weights,
    set_rng_state,
    write_text_atomically,
)
from seglab.engine.evaluate import evaluate
from seglab.engine.optim import build_optimizer, build_scheduler
from seglab.engine.sampler import TrainSampler
from seglab.errors import SeglabError
from seglab.losses import SegmentationLoss, dataset_median_frequency_weights
from seglab.models import create_model


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SeglabError(f"train.device={name} but no CUDA device is available; use cpu or auto")
    return torch.device(name)


def build_datasets(cfg: Config, check: bool = True) -> tuple[FolderDataset, FolderDataset]:
    """Train and val datasets of cfg.data, each read once by the label check."""
    d = cfg.data
    augment = train_transform(d.crop_size, d.scale_range, d.hflip)
    train_set = build_dataset(d.format, d.root, d.train_split, augment, d.cache)
    val_set = build_dataset(d.format, d.root, d.val_split, eval_transform(), d.cache)
    if check:
        check_dataset(train_set)
        check_dataset(val_set)
    return train_set, val_set


def _class_weights(cfg: Config, train_set: FolderDataset) -> list[float] | None:
    weights = cfg.loss.class_weights
    if weights == "median_frequency":
        return dataset_median_frequency_weights(train_set, train_set.num_classes).tolist()
    if isinstance(weights, str):
        raise SeglabError(f"loss.class_weights {weights!r}: use median_frequency or a list")
    if weights is not None and len(weights) != train_set.num_classes:
        raise SeglabError(
            f"loss.class_weights has {len(weights)} values for {train_set.num_classes} classes"
        )
    return weights


def _append_jsonl(path: Path, record: dict) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint a resumed run restarts from."""
    if path.is_file():
        kept = [
            line
            for line in path.read_text().splitlines(keepends=True)
            if json.loads(line).get("step", 0) <= step
        ]
        write_text_atomically(path, "".join(kept))


def train(
    cfg: Config, resume: bool = False, progress: bool = True, stop_after: int | None = None
) -> Path:
    """Train cfg's model on cfg's data; returns the run directory.

    stop_after: leave the loop after this step as an interrupted job would, with the resume
    checkpoint written (for time-boxed cluster jobs; `resume=True` continues the run).
    """
    run_dir = Path(cfg.run_dir)
    resume_path = run_dir / "last.pt"
    if resume_path.exists() and not resume:
        raise SeglabError(
            f"{run_dir} already holds a run; add --resume to continue it, or set run_dir=... "
            "to start a new one"
        )
    device = resolve_device(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)

    # Data: the label check runs before anything is written.
    train_set, val_set = build_datasets(cfg)
    num_classes = train_set.num_classes
    sampler_generator = torch.Generator()  # keeps DataLoader off the global RNG (exact resume)

    # Model, loss, optimizer, schedule.
    model = create_model(cfg.model.name, num_classes, **cfg.model.options).to(device)
    aux_weights = cfg.loss.aux_weights
    if aux_weights is None:
        aux_weights = list(getattr(model, "aux_weights", []))
    criterion = SegmentationLoss(_class_weights(cfg, train_set), aux_weights).to(device)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.iters)
    use_scaler = cfg.train.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    step, best_miou = 0, -math.inf
    metrics_log = run_dir / "metrics.jsonl"
    if resume:
        state = load_resume(resume_path)
        load_state_checked(model, state["model"], resume_path, cfg.model.name)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        step, best_miou = state["step"], state["best_miou"]
        set_rng_state(state["rng"])
        _truncate_log(metrics_log, step)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")

    def save_state() -> None:
        save_resume(
            resume_path,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "step": step,
                "best_miou": best_miou,
            },
        )

    loader = DataLoader(
        train_set,
        batch_size=cfg.data.batch_size,
        sampler=TrainSampler(len(train_set), cfg.data.batch_size, cfg.train.seed, step),
        num_workers=cfg.data.num_workers,
        pin_memory=device.type == "cuda",
        generator=sampler_generator,
        persistent_workers=False,
    )
    model.train()
    bar = tqdm(
        total=cfg.train.iters,
        initial=step,
        desc="training",
        unit="it",
        disable=not progress,
        dynamic_ncols=True,
    )
    tic, images_seen = time.perf_counter(), 0
    for images, masks in loader:
        if step >= cfg.train.iters:
            break
        images = images.to(device, non_blocking=True)
        masks = masks.to(device, non_blocking=True)
        autocast = torch.autocast(device.type, amp_dtype) if cfg.train.amp else nullcontext()
        with autocast:
            loss = criterion(model(images), masks)
        if not torch.isfinite(loss):  # stop before a NaN reaches the weights
            raise SeglabError(
                f"step {step + 1}: loss is {loss.item()}; lower optim.lr or set optim.grad_clip, "
                f"then continue from the last good checkpoint with --resume ({resume_path})"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if cfg.optim.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        step += 1
        images_seen += images.shape[0]

        if step % cfg.train.log_every == 0 or step == cfg.train.iters:
            elapsed = time.perf_counter() - tic
            record = {
                "step": step,
                "loss": round(loss.item(), 5),
                "lr": optimizer.param_groups[0]["lr"],
                "images_per_s": round(images_seen / elapsed, 2),
            }
            _append_jsonl(metrics_log, record)
            bar.set_postfix(
                loss=f"{record['loss']:.3f}",
                lr=f"{record['lr']:.2e}",
                img_s=f"{record['images_per_s']:.1f}",
            )
            tic, images_seen = time.perf_counter(), 0
        bar.update(1)

        if step % cfg.train.eval_every == 0 or step == cfg.train.iters:
            confusion = evaluate(model, val_set, device, cfg.inference, progress=False)
            scores = confusion.compute()
            _append_jsonl(
                metrics_log,
                {"step": step, "val": {k: v for k, v in scores.items() if not isinstance(v, list)}},
            )
            bar.write(f"step {step}: val mIoU {100 * scores['mean_iou']:.2f}")
            if scores["mean_iou"] > best_miou:
                best_miou = scores["mean_iou"]
                save_weights(model, run_dir / "best.safetensors", train_set.classes)
            save_state()
            tic = time.perf_counter()
        elif step % cfg.train.checkpoint_every == 0 or step == stop_after:
            save_state()
        if step == stop_after:
            bar.close()
            return run_dir
    bar.close()
    save_weights(model, run_dir / "final.safetensors", train_set.classes)
    return run_dir
