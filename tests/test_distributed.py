"""Training beyond one process (on the CPU, gloo): DDP equivalence, gradient accumulation,
kill -9 and resume, non-finite losses, bf16 autocast, OOM fallback in evaluation."""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from seglab.config import save_config
from seglab.engine.trainer import train

# No BN (per-rank batch statistics would differ), no dropout, no crop padding: every sample
# contributes the same number of pixels, so one process and two must agree to float precision.
EXACT = [
    "model.options={width: 4, depth: 2, padding: same, batch_norm: false, dropout: 0.0}",
    "data.crop_size=null",
    "data.scale_range=null",
    "train.threads=1",
]


def _losses(run: Path) -> list[float]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    return [line["loss"] for line in lines if "loss" in line]


def _assert_same_weights(a: Path, b: Path, exact: bool = True) -> None:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for key in wa:
        if exact:
            assert torch.equal(wa[key], wb[key]), key
        else:
            assert torch.allclose(wa[key], wb[key], rtol=1e-4, atol=1e-6), key


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def test_two_gloo_processes_follow_the_single_process_loss_curve(tiny_config, tmp_path):
    single = tiny_config(*EXACT, f"run_dir={tmp_path / 'single'}")
    train(single, progress=False)
    double = tiny_config(*EXACT, f"run_dir={tmp_path / 'ddp'}")
    config = tmp_path / "ddp.yaml"
    save_config(double, config)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "seglab",
            "--quiet",
            "train",
            str(config),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    a, b = _losses(tmp_path / "single"), _losses(tmp_path / "ddp")
    assert len(a) == len(b) == 6  # one line per step: rank 0 alone writes the log
    assert a == pytest.approx(b, rel=1e-4)  # stated tolerance: float reduction order only
    _assert_same_weights(
        tmp_path / "single" / "final.safetensors",
        tmp_path / "ddp" / "final.safetensors",
        exact=False,
    )
    evals = [line for line in (tmp_path / "ddp" / "metrics.jsonl").open() if "val" in line]
    assert len(evals) == 2


def test_accumulating_two_micro_batches_equals_one_batch(tiny_config, tmp_path):
    train(tiny_config(*EXACT, f"run_dir={tmp_path / 'one'}"), progress=False)
    train(tiny_config(*EXACT, f"run_dir={tmp_path / 'acc'}", "train.accumulate=2"), progress=False)
    assert _losses(tmp_path / "one") == pytest.approx(_losses(tmp_path / "acc"), rel=1e-4)
    _assert_same_weights(
        tmp_path / "one" / "final.safetensors", tmp_path / "acc" / "final.safetensors", exact=False
    )


def test_kill_9_at_any_moment_then_resume_equals_an_uninterrupted_run(tiny_config, tmp_path):
    overrides = [
        *EXACT,
        "train.iters=30",
        "train.checkpoint_every=1",
        "train.eval_every=10",
        "model.options.dropout=0.2",
    ]
    train(tiny_config(*overrides, f"run_dir={tmp_path / 'straight'}"), progress=False)
    killed_run = tmp_path / "killed"
    config = tmp_path / "killed.yaml"
    save_config(tiny_config(*overrides, f"run_dir={killed_run}"), config)
    command = [sys.executable, "-m", "seglab", "--quiet", "train", str(config)]
    kills = 0
    mid_write = False
    for attempt in range(2):
        process = subprocess.Popen(
            command + (["--resume"] if attempt else []),
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 120
        while process.poll() is None and time.time() < deadline:
            temporary = list(killed_run.glob(".last.pt.*.tmp"))
            steps = len(_losses(killed_run)) if (killed_run / "metrics.jsonl").exists() else 0
            # First kill: while a checkpoint is being written; second: between writes.
            if (attempt == 0 and temporary and steps >= 3) or (attempt == 1 and steps >= 15):
                process.send_signal(signal.SIGKILL)
                process.wait()
                kills += 1
                mid_write |= bool(temporary)
                break
        process.wait(timeout=120)
    assert kills >= 1
    result = subprocess.run(
        command + ["--resume"], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert not list(killed_run.glob(".*.tmp"))
    _assert_same_weights(
        tmp_path / "straight" / "final.safetensors", killed_run / "final.safetensors"
    )
    assert _losses(killed_run) == _losses(tmp_path / "straight")


def _nan_loss_at_call(monkeypatch, bad_call: int) -> None:
    from seglab import losses

    real, calls = losses.SegmentationLoss.forward, []

    def forward(self, outputs, target, pixel_weights=None, **inputs):
        calls.append(1)
        loss = real(self, outputs, target, pixel_weights, **inputs)
        return loss * float("nan") if len(calls) == bad_call else loss

    monkeypatch.setattr(losses.SegmentationLoss, "forward", forward)


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(
    tiny_config, tmp_path, monkeypatch
):
    from seglab.errors import SeglabError

    _nan_loss_at_call(monkeypatch, 3)
    cfg = tiny_config("train.iters=8", "train.eval_every=100", "train.checkpoint_every=1")
    with pytest.raises(SeglabError, match=r"step 3: loss is nan"):
        train(cfg, progress=False)
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_non_finite_loss_can_skip_the_step(tiny_config, tmp_path, monkeypatch):
    _nan_loss_at_call(monkeypatch, 3)
    train(tiny_config("train.iters=6", "train.on_nonfinite=skip"), progress=False)
    weights = load_file(str(tmp_path / "run" / "final.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_overflowing_update_is_caught_by_the_gradient_norm(tiny_config, tmp_path):
    from seglab.errors import SeglabError

    cfg = tiny_config(
        "optim.lr=1e38", "optim.momentum=0.0", "train.iters=8", "train.eval_every=100"
    )
    with pytest.raises(SeglabError, match=r"step \d+: loss is"):
        train(cfg, progress=False)


def test_bf16_autocast_trains_on_the_cpu(tiny_config, tmp_path):
    train(tiny_config("train.amp=true", "train.iters=2", "train.eval_every=2"), progress=False)
    assert all(l == l for l in _losses(tmp_path / "run"))  # noqa: E741 (not NaN)


def test_out_of_memory_in_whole_image_evaluation_falls_back_to_sliding_window(
    shapes_root, monkeypatch
):
    from seglab.config import InferenceConfig
    from seglab.data import FolderDataset
    from seglab.data.transforms import eval_transform

    evaluate_module = importlib.import_module("seglab.engine.evaluate")  # not the function
    from seglab.models import create_model

    real = evaluate_module.predict_probabilities
    modes = []

    def whole_runs_out_of_memory(model, images, inference):
        modes.append(inference.mode)
        if inference.mode == "whole":
            raise torch.OutOfMemoryError("simulated")
        return real(model, images, inference)

    monkeypatch.setattr(evaluate_module, "predict_probabilities", whole_runs_out_of_memory)
    model = create_model("unet", num_classes=6, in_channels=3, width=4, depth=2, padding="same")
    dataset = FolderDataset(shapes_root, "val", eval_transform())
    with pytest.warns(UserWarning, match="sliding window"):
        confusion = evaluate_module.evaluate(
            model, dataset, torch.device("cpu"), InferenceConfig(), progress=False
        )
    assert confusion.matrix.sum() == 8 * 32 * 32
    assert "slide" in modes
