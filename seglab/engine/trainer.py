"""The training loop: iteration-based, resumable to the bit, evaluating as it goes.

`_train` reads top to bottom: settings, data, model, resume, run directory, then the loop;
`Trainer.run_step` is one optimizer step (forward, loss, backward, clipping, optimizer and
schedule), as in nanoGPT's train.py and detectron2's SimpleTrainer.run_step. What is built
before the first step is engine/run_setup.py; the logs and their restart engine/run_log.py.

Everything a run produces goes to cfg.run_dir, written by rank 0 only: config.yaml,
metrics.jsonl, train.log (the console's lines), curves.png, last.pt (resume state),
best.safetensors / final.safetensors (+ .yaml; best.yaml names its step), tensorboard/.
A run killed at any moment continues with `resume=True` (`--resume`): from
last.pt, or from step 0 when it was killed before the first checkpoint, and ends with the
files and weights of an uninterrupted run.

Under torchrun each rank takes its slice of every global batch (cfg.data.batch_size), split
further into cfg.train.accumulate micro-batches; gradients are averaged by DDP, so a step sees
the same samples whatever the number of processes.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from seglab.config import Config, save_config
from seglab.data.folder import FolderDataset
from seglab.data.weak_training import MarkPadding, split_padding
from seglab.engine.checkpoint import load_resume, save_resume, set_rng_state
from seglab.engine.curves import write_curves
from seglab.engine.distributed import World, any_rank, close_world, init_world, mean_over_ranks
from seglab.engine.instance_step import evaluate_instances_during_training, instance_losses
from seglab.engine.optim import build_optimizer, build_scheduler
from seglab.engine.run_feedback import (
    Console,
    best_meta,
    closing_message,
    eval_line,
    evaluate_semantic,
    read_best_step,
    startup_summary,
)
from seglab.engine.run_log import RunLog, restart_run_dir
from seglab.engine.run_setup import (
    amp_dtype,
    amp_enabled,
    build_datasets,
    build_loader,
    build_loss,
    build_model,
    check_settings,
    class_weights,
    memory_format,
    next_batch,
)
from seglab.errors import SeglabError
from seglab.losses_unet import border_weights_from_labels
from seglab.models import SegmentationModel
from seglab.threads import AdaptiveThreads, adaptive_threads_enabled
from seglab.weights import load_state_checked, save_weights

__all__ = ["Trainer", "build_datasets", "train"]

_SCORE_KEY = {"semantic": "mean_iou", "instance": "mask_AP"}  # what "best" means, per task


def train(
    cfg: Config, resume: bool = False, progress: bool = True, stop_after: int | None = None
) -> Path:
    """Train cfg's model on cfg's data; returns the run directory.

    progress: draw the progress bars (the dataset check's too).
    stop_after: leave the loop after this step as an interrupted job would, with the resume
    checkpoint written (for time-boxed cluster jobs; `resume=True` continues the run).
    """
    world, device = init_world(cfg.train.device)
    try:
        return _train(cfg, world, device, resume, progress and world.is_main, stop_after)
    finally:
        close_world()


class Trainer:
    """The model and everything one optimizer step touches: loss, optimizer, schedule, scaler."""

    def __init__(
        self,
        cfg: Config,
        world: World,
        device: torch.device,
        model: SegmentationModel,
        weights: list[float] | None,
    ) -> None:
        self.cfg, self.world, self.device = cfg, world, device
        self.model = self.net = model  # net: the DDP / compiled wrapper once `wrap` ran
        self.class_weights = weights
        # An instance model (Mask R-CNN) computes its own loss dict (engine/instance_step.py).
        self.instance = model.task == "instance"
        self.criterion = None if self.instance else build_loss(cfg, model, weights, device)
        if cfg.distill is not None and not self.instance:  # the teacher lives in the criterion,
            from seglab.weak.distill import DistillationLoss  # never in the student's weights

            self.criterion = DistillationLoss(self.criterion, cfg.distill, model, device)
        self.loss_terms: dict[str, float] = {}  # the last step's loss dict, logged per term
        # The Gated CRF loss and distillation leave out pixels a crop padded (MarkPadding).
        self.marks_padding = not self.instance and (
            cfg.loss.gated_crf is not None or cfg.distill is not None
        )
        self.optimizer = build_optimizer(model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, cfg.train.iters)
        self.amp_dtype = amp_dtype(cfg, device)
        self.amp = amp_enabled(cfg, device)
        fp16 = self.amp and self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(device.type, enabled=fp16)
        self.memory_format = memory_format(cfg)
        self.batchnorms = [
            m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
        ]
        if cfg.train.freeze_bn:  # DeepLab v3's second stage: BN statistics and affine fixed
            for bn in self.batchnorms:
                bn.requires_grad_(False)

    def state_dict(self) -> dict[str, Any]:
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }
        if hasattr(self.criterion, "critic_state"):  # distillation's critic (never the teacher)
            state["critic"] = self.criterion.critic_state()
        return state

    def load_state_dict(self, state: dict[str, Any], path: Path) -> None:
        load_state_checked(self.model, state["model"], path, self.cfg.model.name)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if hasattr(self.criterion, "critic_state"):
            if "critic" not in state:
                raise SeglabError(
                    f"{path}: holds no distillation critic (written without distill:); resume "
                    "it with the config it was written with, or start a new run_dir"
                )
            self.criterion.load_critic_state(state["critic"])

    def wrap(self) -> None:
        """DDP across ranks, then torch.compile, as the config asks."""
        if self.world.distributed:
            device_ids = [self.device] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        if self.cfg.train.compile:
            self.net = torch.compile(self.net)

    def set_training_mode(self) -> None:
        self.model.train()
        if self.cfg.train.freeze_bn:
            for bn in self.batchnorms:
                bn.eval()

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def _micro_batch(self, batches):
        """(images, masks, U-Net border weights or None, {"valid": (B, H, W) bool} where the
        crop padding is marked, else {}) of the next micro-batch, on device."""
        images, masks = next_batch(batches)
        extra = {}
        if self.marks_padding:
            masks, valid = split_padding(masks)
            extra["valid"] = valid.to(self.device, non_blocking=True)
        pixel_weights, border = None, self.cfg.loss.border_weights
        if border is not None:  # after augmentation: scaling changes the distances
            pixel_weights = border_weights_from_labels(
                masks, **border, class_weights=self.class_weights
            ).to(self.device, non_blocking=True)
        images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
        return images, masks.to(self.device, non_blocking=True), pixel_weights, extra

    def run_step(self, batches, step: int) -> torch.Tensor:
        """Optimizer step number `step` on `accumulate` micro-batches; returns its loss on this
        rank. DDP syncs gradients on the last micro-batch only."""
        cfg, accumulate = self.cfg, self.cfg.train.accumulate
        self.optimizer.zero_grad(set_to_none=True)
        step_loss = torch.zeros((), device=self.device)
        terms: dict[str, torch.Tensor] = {}
        for micro in range(accumulate):
            last = micro == accumulate - 1
            sync = nullcontext() if last or not self.world.distributed else self.net.no_sync()
            with sync:
                with torch.autocast(self.device.type, self.amp_dtype, enabled=self.amp):
                    if self.instance:
                        losses = instance_losses(self.net, next_batch(batches), self.device)
                        for key, value in losses.items():
                            terms[key] = terms.get(key, 0) + value.detach() / accumulate
                        loss = sum(losses.values()) / accumulate
                    else:
                        images, masks, pixel_weights, extra = self._micro_batch(batches)
                        outputs = self.net(images)
                        loss = self.criterion(outputs, masks, pixel_weights, images=images,
                                              **extra)  # fmt: skip
                        loss = loss / accumulate
                        # distillation's terms (task, pixel, pair, holistic, critic) per step
                        logged = getattr(self.criterion, "logged_terms", dict)()
                        for key, value in logged.items():
                            value = torch.as_tensor(value, device=self.device) / accumulate
                            terms[key] = terms.get(key, 0) + value
                self.scaler.scale(loss).backward()
            step_loss += loss.detach()
        self.loss_terms = {key: mean_over_ranks(value).item() for key, value in terms.items()}
        self.scaler.unscale_(self.optimizer)  # no-op without fp16 scaling: the true norm
        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), cfg.optim.grad_clip or math.inf
        )
        finite = torch.isfinite(step_loss) & (torch.isfinite(grad_norm) | self.scaler.is_enabled())
        if any_rank(not finite.item(), self.device):
            # The optimizer has not stepped: the weights are still the last finite ones.
            if cfg.train.on_nonfinite == "stop":
                raise SeglabError(
                    f"step {step}: loss is {step_loss.item():.4g} with gradient norm "
                    f"{grad_norm.item():.4g}; lower optim.lr or set optim.grad_clip, then "
                    f"continue from the last good checkpoint with --resume "
                    f"({Path(cfg.run_dir) / 'last.pt'}), or set train.on_nonfinite=skip"
                )
            self.optimizer.zero_grad(set_to_none=True)
            tqdm.write(f"step {step}: non-finite loss or gradient, step skipped")
        self.scaler.step(self.optimizer)  # with fp16 the scaler itself skips inf gradients
        self.scaler.update()
        self.scheduler.step()
        return step_loss


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
    check_settings(cfg, world)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)

    # Data (the label check runs before anything is written), model, loss and optimizer.
    train_set, val_set = build_datasets(cfg, check=True, progress=progress)
    model = build_model(cfg, train_set, world, device, resume)
    trainer = Trainer(cfg, world, device, model, class_weights(cfg, train_set))
    if trainer.marks_padding:  # the losses then tell padded pixels from unlabelled ones
        train_set.transform = MarkPadding(train_set.transform)

    # Resume from last.pt; without one (a run killed before its first checkpoint) from step 0.
    step, best_miou = 0, -math.inf
    checkpointed = resume and resume_path.is_file()
    if checkpointed:
        state = load_resume(resume_path)
        trainer.load_state_dict(state, resume_path)
        step, best_miou = state["step"], state["best_miou"]
        set_rng_state(state["rng"])
    # State fitted from the training labels (DUpsampling's W), unless a checkpoint holds it.
    fit_from_data = getattr(model, "fit_from_data", None)
    if fit_from_data is not None and (report := fit_from_data(train_set, val_set)) and progress:
        tqdm.write(report)
    trainer.wrap()
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        restart_run_dir(run_dir, step if checkpointed else None, resume)
        save_config(cfg, run_dir / "config.yaml")
    log = RunLog(cfg, run_dir, world.is_main)
    # The console's lines, also in train.log: what runs where, and from which step.
    console = Console(run_dir, world.is_main, progress)
    amp = trainer.amp_dtype if trainer.amp else None
    console.say(step, startup_summary(cfg, model, train_set, val_set, device, world, run_dir, amp))
    best_step = read_best_step(run_dir) if checkpointed else None
    if checkpointed:
        console.say(step, f"resumed from step {step} ({resume_path})")
        if world.is_main:
            write_curves(run_dir)  # drawn again from the log cut back to the checkpoint
    score_key = _SCORE_KEY[model.task]

    def save_state() -> None:
        if world.is_main:
            save_resume(resume_path, {**trainer.state_dict(), "step": step, "best_miou": best_miou})

    batches = iter(build_loader(cfg, train_set, world, device, step))
    bar = tqdm(
        total=cfg.train.iters,
        initial=step,
        desc="training",
        unit="it",
        disable=not progress,
        dynamic_ncols=True,
    )
    trainer.set_training_mode()
    # 1 or all CPU threads, whichever steps faster now (seglab/threads.py: busy machines)
    threads = AdaptiveThreads(enabled=adaptive_threads_enabled(device))
    tic, steps_timed = time.perf_counter(), 0
    while step < cfg.train.iters:
        started = time.perf_counter()
        loss = trainer.run_step(batches, step + 1)
        threads.record(time.perf_counter() - started)
        step, steps_timed = step + 1, steps_timed + 1

        if step % cfg.train.log_every == 0 or step == cfg.train.iters:
            mean_loss = mean_over_ranks(loss).item()
            images_per_s = steps_timed * cfg.data.batch_size / (time.perf_counter() - tic)
            log.train(step, mean_loss, trainer.lr, images_per_s, trainer.loss_terms)
            bar.set_postfix(
                loss=f"{mean_loss:.3f}", lr=f"{trainer.lr:.2e}", img_s=f"{images_per_s:.1f}"
            )
            tic, steps_timed = time.perf_counter(), 0
        bar.update(1)

        if step % cfg.train.eval_every == 0 or step == cfg.train.iters:
            scores = _evaluate(cfg, world, device, model, val_set, step, log)
            miou, improved = scores[score_key], scores[score_key] > best_miou
            if improved:
                best_step = step
                if world.is_main:
                    extra = best_meta(step, score_key, miou)
                    save_weights(model, run_dir / "best.safetensors", train_set.classes, extra)
            best_miou = max(best_miou, miou)
            if world.is_main:
                write_curves(run_dir)
            console.say(step, eval_line(step, scores, score_key, improved))
            save_state()
            trainer.set_training_mode()  # evaluation switched every module to eval mode
            tic, steps_timed = time.perf_counter(), 0
        elif step % cfg.train.checkpoint_every == 0 or step == stop_after:
            save_state()
        if step == stop_after:
            break
    bar.close()
    threads.close()
    log.close()
    if world.is_main and step == cfg.train.iters:
        save_weights(model, run_dir / "final.safetensors", train_set.classes)
    console.say(
        step, closing_message(run_dir, step, cfg.train.iters, best_step, score_key, best_miou)
    )
    return run_dir


def _evaluate(
    cfg: Config,
    world: World,
    device: torch.device,
    model: SegmentationModel,
    val_set: FolderDataset,
    step: int,
    log: RunLog,
) -> dict:
    """Evaluate on val (each rank a shard), log the scores and return them: mean_iou, the
    validation loss and per-class IoU (engine/run_feedback.py); instance models: mask_AP,
    on the whole split."""
    if model.task == "instance":
        scores = evaluate_instances_during_training(model, val_set, device)
    else:
        scores = evaluate_semantic(cfg, world, device, model, val_set)
    log.val(step, scores, model, val_set, device)
    return scores
