"""The training loop: iteration-based, resumable to the bit, evaluating as it goes.

Reads top to bottom: world, data, model, loss, optimizer, resume, then the loop. Everything a
run produces goes to cfg.run_dir, written by rank 0 only: config.yaml, metrics.jsonl, last.pt
(resume state), best.safetensors / final.safetensors (+ .yaml), tensorboard/.

Under torchrun each rank takes its slice of every global batch (cfg.data.batch_size), split
further into cfg.train.accumulate micro-batches; gradients are averaged by DDP, so a step sees
the same samples whatever the number of processes.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from tqdm import tqdm

from seglab.atomic import write_text_atomically
from seglab.config import Config, save_config
from seglab.data import build_dataset
from seglab.data.folder import FolderDataset, check_dataset
from seglab.data.transforms import eval_transform, train_transform
from seglab.engine.checkpoint import load_resume, save_resume, set_rng_state
from seglab.engine.distributed import World, any_rank, close_world, init_world, mean_over_ranks
from seglab.engine.evaluate import evaluate
from seglab.engine.optim import build_optimizer, build_scheduler
from seglab.engine.sampler import TrainSampler
from seglab.errors import SeglabError
from seglab.losses import SegmentationLoss, dataset_median_frequency_weights
from seglab.losses_unet import border_weights_from_labels
from seglab.models import create_model
from seglab.weights import load_state_checked, save_weights


def build_datasets(cfg: Config, check: bool = True) -> tuple[FolderDataset, FolderDataset]:
    """Train and val datasets of cfg.data, each read once by the label check."""
    d = cfg.data
    augment = train_transform(d.crop_size, d.scale_range, d.hflip, augment=d.augment)
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


def _logged_step(line: str) -> int | None:
    """The step of a metrics.jsonl line; None for a line cut short by a killed process."""
    try:
        return json.loads(line).get("step", 0)
    except json.JSONDecodeError:
        return None


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint a resumed run restarts from (and a last
    line half-written when the process was killed)."""
    if path.is_file():
        kept = []
        for line in path.read_text().splitlines():
            logged = _logged_step(line)
            if logged is not None and logged <= step:
                kept.append(line + "\n")
        write_text_atomically(path, "".join(kept))


def _amp_dtype(cfg: Config, device: torch.device) -> torch.dtype:
    name = cfg.train.amp_dtype
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    if name not in ("bfloat16", "float16"):
        raise SeglabError(f"train.amp_dtype {name!r} is not one of: auto, bfloat16, float16")
    return getattr(torch, name)


def _tensorboard_writer(cfg: Config, run_dir: Path):
    if not cfg.train.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional extra: pip install 'seglab[tensorboard]'
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


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


def train(
    cfg: Config, resume: bool = False, progress: bool = True, stop_after: int | None = None
) -> Path:
    """Train cfg's model on cfg's data; returns the run directory.

    stop_after: leave the loop after this step as an interrupted job would, with the resume
    checkpoint written (for time-boxed cluster jobs; `resume=True` continues the run).
    """
    world, device = init_world(cfg.train.device)
    try:
        return _train(cfg, world, device, resume, progress and world.is_main, stop_after)
    finally:
        close_world()


def _train(
    cfg: Config,
    world: World,
    device: torch.device,
    resume: bool,
    progress: bool,
    stop_after: int | None,
) -> Path:
    run_dir = Path(cfg.run_dir)
    resume_path = run_dir / "last.pt"
    if resume_path.exists() and not resume:
        raise SeglabError(
            f"{run_dir} already holds a run; add --resume to continue it, or set run_dir=... "
            "to start a new one"
        )
    accumulate, batch = cfg.train.accumulate, cfg.data.batch_size
    if accumulate < 1 or batch % (world.size * accumulate):
        raise SeglabError(
            f"data.batch_size={batch} must split evenly over {world.size} process(es) x "
            f"train.accumulate={accumulate} micro-batches"
        )
    if cfg.train.on_nonfinite not in ("stop", "skip"):
        raise SeglabError(f"train.on_nonfinite {cfg.train.on_nonfinite!r}: use stop or skip")
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)

    # Data: the label check runs before anything is written.
    train_set, val_set = build_datasets(cfg, check=True)
    num_classes = train_set.num_classes

    # Model (SyncBN, memory format, DDP, compile), loss, optimizer, schedule.
    model = create_model(cfg.model.name, num_classes, **cfg.model.options)
    if cfg.model.init_weights and not resume:  # resume restores its own weights
        init_path = Path(cfg.model.init_weights)
        if not init_path.is_file():
            raise SeglabError(f"model.init_weights: {init_path} does not exist")
        load_state_checked(model, load_file(str(init_path)), init_path, cfg.model.name)
    if cfg.train.sync_bn and world.distributed:
        if device.type == "cpu":  # PyTorch's SyncBatchNorm runs on GPUs only
            warnings.warn(
                "train.sync_bn needs CUDA; on the CPU each process keeps its own BN", stacklevel=2
            )
        else:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same object
    model.to(device)
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    aux_weights = cfg.loss.aux_weights
    if aux_weights is None:
        aux_weights = list(getattr(model, "aux_weights", []))
    class_weights = _class_weights(cfg, train_set)
    border = cfg.loss.border_weights
    if border is not None and set(border) - {"w0", "sigma"}:
        raise SeglabError(f"loss.border_weights takes w0 and sigma, got {sorted(border)}")
    # With U-Net's border weights the class weights become its w_c term inside w(x).
    criterion = SegmentationLoss(None if border else class_weights, aux_weights).to(device)
    batchnorms = [
        m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    ]
    if cfg.train.freeze_bn:  # DeepLab v3's second stage: BN statistics and affine fixed
        for bn in batchnorms:
            bn.requires_grad_(False)

    def set_training_mode() -> None:
        model.train()
        if cfg.train.freeze_bn:
            for bn in batchnorms:
                bn.eval()

    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.iters)
    amp_dtype = _amp_dtype(cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp and amp_dtype == torch.float16)

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
        if world.is_main:
            _truncate_log(metrics_log, step)
            for stale in run_dir.glob(".*.tmp"):  # left by a process killed mid-write
                stale.unlink(missing_ok=True)
    net = model
    if world.distributed:
        device_ids = [device] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    if cfg.train.compile:
        net = torch.compile(net)
    writer = None
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        writer = _tensorboard_writer(cfg, run_dir)

    def save_state() -> None:
        if world.is_main:
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

    micro_batch = batch // (world.size * accumulate)
    loader = DataLoader(
        train_set,
        batch_size=micro_batch,
        sampler=TrainSampler(len(train_set), batch, cfg.train.seed, step, world.rank, world.size),
        num_workers=cfg.data.num_workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # keeps DataLoader off the global RNG (exact resume)
    )
    batches = iter(loader)
    val_indices = range(world.rank, len(val_set), world.size)  # each rank evaluates a shard
    set_training_mode()
    bar = tqdm(
        total=cfg.train.iters,
        initial=step,
        desc="training",
        unit="it",
        disable=not progress,
        dynamic_ncols=True,
    )
    tic, steps_timed = time.perf_counter(), 0
    while step < cfg.train.iters:
        # One optimizer step = `accumulate` micro-batches; DDP syncs gradients on the last.
        optimizer.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), device=device)
        for micro in range(accumulate):
            images, masks = next(batches)
            pixel_weights = None
            if border is not None:  # after augmentation: scaling changes the distances
                pixel_weights = border_weights_from_labels(
                    masks, **border, class_weights=class_weights
                )
                pixel_weights = pixel_weights.to(device, non_blocking=True)
            images = images.to(device, non_blocking=True, memory_format=memory_format)
            masks = masks.to(device, non_blocking=True)
            last = micro == accumulate - 1
            sync = nullcontext() if last or not world.distributed else net.no_sync()
            with sync:
                with torch.autocast(device.type, amp_dtype, enabled=cfg.train.amp):
                    loss = criterion(net(images), masks, pixel_weights) / accumulate
                scaler.scale(loss).backward()
            step_loss += loss.detach()
        step += 1
        scaler.unscale_(optimizer)  # no-op without fp16 scaling; lets us see the true norm
        grad_norm = torch.nn.utils.clip_grad_norm_(
            model.parameters(), cfg.optim.grad_clip or math.inf
        )
        finite = torch.isfinite(step_loss) & (torch.isfinite(grad_norm) | scaler.is_enabled())
        if any_rank(not finite.item(), device):
            # The optimizer has not stepped: the weights are still the last finite ones.
            if cfg.train.on_nonfinite == "stop":
                raise SeglabError(
                    f"step {step}: loss is {step_loss.item():.4g} with gradient norm "
                    f"{grad_norm.item():.4g}; lower optim.lr or set optim.grad_clip, then "
                    f"continue from the last good checkpoint with --resume ({resume_path}), "
                    "or set train.on_nonfinite=skip"
                )
            optimizer.zero_grad(set_to_none=True)
            bar.write(f"step {step}: non-finite loss or gradient, step skipped")
        scaler.step(optimizer)  # with fp16 the scaler itself skips steps with inf gradients
        scaler.update()
        scheduler.step()
        steps_timed += 1

        if step % cfg.train.log_every == 0 or step == cfg.train.iters:
            mean_loss = mean_over_ranks(step_loss).item()
            elapsed = time.perf_counter() - tic
            record = {
                "step": step,
                "loss": round(mean_loss, 5),
                "lr": optimizer.param_groups[0]["lr"],
                "images_per_s": round(steps_timed * batch / elapsed, 2),
            }
            if world.is_main:
                _append_jsonl(metrics_log, record)
                if writer is not None:
                    writer.add_scalar("train/loss", mean_loss, step)
                    writer.add_scalar("train/lr", record["lr"], step)
            bar.set_postfix(
                loss=f"{mean_loss:.3f}",
                lr=f"{record['lr']:.2e}",
                img_s=f"{record['images_per_s']:.1f}",
            )
            tic, steps_timed = time.perf_counter(), 0
        bar.update(1)

        if step % cfg.train.eval_every == 0 or step == cfg.train.iters:
            confusion = evaluate(
                model, val_set, device, cfg.inference, progress=False, indices=val_indices
            )
            scores = confusion.compute()
            summary = {k: v for k, v in scores.items() if not isinstance(v, list)}
            if world.is_main:
                _append_jsonl(metrics_log, {"step": step, "val": summary})
                if writer is not None:
                    for key, value in summary.items():
                        writer.add_scalar(f"val/{key}", value, step)
                    _log_sample_prediction(writer, model, val_set, device, step)
                if scores["mean_iou"] > best_miou:
                    save_weights(model, run_dir / "best.safetensors", train_set.classes)
            best_miou = max(best_miou, scores["mean_iou"])
            bar.write(f"step {step}: val mIoU {100 * scores['mean_iou']:.2f}")
            save_state()
            set_training_mode()  # evaluation switched every module back to train mode
            tic, steps_timed = time.perf_counter(), 0
        elif step % cfg.train.checkpoint_every == 0 or step == stop_after:
            save_state()
        if step == stop_after:
            break
    bar.close()
    if writer is not None:
        writer.close()
    if world.is_main and step == cfg.train.iters:
        save_weights(model, run_dir / "final.safetensors", train_set.classes)
    return run_dir
