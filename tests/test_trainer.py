"""The training loop: exact resume, atomic checkpoints, non-finite loss, run directory."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from seglab.engine import checkpoint as checkpoint_module
from seglab.engine.trainer import train
from seglab.errors import SeglabError


def _weights(path):
    return load_file(str(path))


def test_n_steps_then_resume_then_n_steps_equals_2n_steps_straight(tiny_config, tmp_path):
    # Dropout, random scale/crop/flip and SGD momentum are all in play: every RNG and the
    # optimizer state must come back for the weights to match.
    straight = tiny_config(f"run_dir={tmp_path / 'straight'}", "model.options.dropout=0.3")
    split = tiny_config(f"run_dir={tmp_path / 'split'}", "model.options.dropout=0.3")
    train(straight, progress=False)
    train(split, progress=False, stop_after=3)
    assert not (tmp_path / "split" / "final.safetensors").exists()
    train(split, resume=True, progress=False)
    a = _weights(tmp_path / "straight" / "final.safetensors")
    b = _weights(tmp_path / "split" / "final.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    losses = [
        [
            json.loads(line)["loss"]
            for line in (tmp_path / run / "metrics.jsonl").open()
            if "loss" in json.loads(line)
        ]
        for run in ("straight", "split")
    ]
    assert losses[0] == losses[1] and len(losses[0]) == 6  # the log has no duplicated steps


def test_run_directory_holds_config_metrics_and_weights(tiny_config, tmp_path):
    run = train(tiny_config(), progress=False)
    names = {p.name for p in run.iterdir()}
    assert {
        "config.yaml",
        "metrics.jsonl",
        "last.pt",
        "best.safetensors",
        "best.yaml",
        "final.safetensors",
        "final.yaml",
    } <= names
    assert not [n for n in names if n.endswith(".tmp")]
    evals = [json.loads(line) for line in (run / "metrics.jsonl").open() if "val" in line]
    assert [e["step"] for e in evals] == [3, 6]


def test_existing_run_is_not_overwritten_without_resume(tiny_config):
    cfg = tiny_config("train.iters=2")
    train(cfg, progress=False)
    with pytest.raises(SeglabError, match="already holds a run; add --resume"):
        train(cfg, progress=False)


def test_non_finite_loss_stops_before_writing_nan_weights(tiny_config, tmp_path):
    cfg = tiny_config(
        "optim.lr=1e30",
        "optim.momentum=0.0",
        "train.iters=50",
        "train.eval_every=100",
        "train.checkpoint_every=100",
    )
    with pytest.raises(SeglabError, match=r"step \d+: loss is (nan|inf)"):
        train(cfg, progress=False)
    assert not (tmp_path / "run" / "final.safetensors").exists()


def test_interrupted_checkpoint_write_keeps_the_previous_file(tiny_config, tmp_path, monkeypatch):
    cfg = tiny_config("train.iters=4", "train.eval_every=100", "train.checkpoint_every=2")
    train(cfg, progress=False, stop_after=2)
    last = tmp_path / "run" / "last.pt"
    before = last.read_bytes()

    def crash(obj, path):  # dies half-way through writing the temporary file
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, resume=True, progress=False)
    assert last.read_bytes() == before
    assert not list((tmp_path / "run").glob("*.tmp"))
    monkeypatch.undo()
    train(cfg, resume=True, progress=False)  # and the run still finishes
    assert (tmp_path / "run" / "final.safetensors").exists()


def test_poly_schedule_with_warmup_by_hand():
    from seglab.config import OptimConfig
    from seglab.engine.optim import lr_factor

    cfg = OptimConfig(schedule="poly", power=0.9, warmup_iters=10)
    assert lr_factor(0, 100, cfg) == pytest.approx(0.01)
    assert lr_factor(5, 100, cfg) == pytest.approx((1 - 0.05) ** 0.9 * (0.01 + 0.99 * 0.5))
    assert lr_factor(50, 100, cfg) == pytest.approx(0.5**0.9)
    step = OptimConfig(schedule="step", step_size=2000, gamma=0.1)
    assert lr_factor(4500, 6000, step) == pytest.approx(0.01)


def test_head_parameters_get_the_lr_multiplier():
    from seglab.config import OptimConfig
    from seglab.engine.optim import build_optimizer
    from seglab.models import create_model

    model = create_model("fcn32s", num_classes=2, width=4)
    optimizer = build_optimizer(model, OptimConfig(lr=0.1, head_lr_mult=10))
    by_lr = {}
    for group in optimizer.param_groups:
        by_lr.setdefault(group["lr"], 0)
        by_lr[group["lr"]] += sum(p.numel() for p in group["params"])
    encoder = sum(p.numel() for p in model.encoder.parameters())
    assert by_lr[0.1] == encoder
    assert by_lr[1.0] == sum(p.numel() for p in model.parameters() if p.requires_grad) - encoder


def test_tensorboard_events_hold_loss_lr_miou_and_a_sample_prediction(tiny_config, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is in the test extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tiny_config(), progress=False)
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/lr", "val/mean_iou"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("val/mean_iou")] == [3, 6]
    assert "val/truth_and_prediction" in tags["images"]


def test_resume_survives_a_metrics_line_cut_short_by_a_kill(tiny_config, tmp_path):
    cfg = tiny_config()
    train(cfg, progress=False, stop_after=3)
    log = tmp_path / "run" / "metrics.jsonl"
    with log.open("a") as handle:
        handle.write('{"step": 4, "loss": 0.')  # the process died mid-append
    train(cfg, resume=True, progress=False)
    records = [json.loads(line) for line in log.open()]  # every line parses again
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]


def test_freeze_bn_keeps_statistics_and_affine_fixed(tiny_config, tmp_path):
    from seglab.models import create_model

    cfg = tiny_config("train.freeze_bn=true", "model.options.dropout=0.0")
    train(cfg, progress=False)
    torch.manual_seed(cfg.train.seed)  # the trainer builds its model right after this seed
    initial = create_model("unet", 6, **cfg.model.options).state_dict()
    final = _weights(tmp_path / "run" / "final.safetensors")
    bn_keys = [k for k in final if ".bn." in k]
    conv_keys = [k for k in final if k.endswith("conv.weight")]
    assert bn_keys and all(torch.equal(final[k], initial[k]) for k in bn_keys)
    assert any(not torch.equal(final[k], initial[k]) for k in conv_keys)


def test_init_weights_starts_a_new_stage_from_a_previous_run(tiny_config, tmp_path):
    train(tiny_config(), progress=False)
    first = tmp_path / "run" / "final.safetensors"
    # lr 0 and frozen BN: the second stage must end exactly where it started.
    second = tiny_config(
        f"run_dir={tmp_path / 'stage2'}",
        f"model.init_weights={first}",
        "optim.lr=0.0",
        "train.freeze_bn=true",
        "train.iters=2",
    )
    train(second, progress=False)
    a, b = _weights(first), _weights(tmp_path / "stage2" / "final.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    wrong = tiny_config(
        f"run_dir={tmp_path / 'wrong'}", f"model.init_weights={first}", "model.options.width=8"
    )
    with pytest.raises(SeglabError, match="checkpoint does not fit"):
        train(wrong, progress=False)
