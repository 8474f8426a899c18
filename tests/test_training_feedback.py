"""Feedback while training: the start-up summary, train.log, curves.png, best.yaml, the
validation loss and per-class IoU in metrics.jsonl, and "resumed from step N"."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from seglab.engine.curves import _MARGIN, PANEL, curve_series, draw_curves
from seglab.engine.run_feedback import truncate_train_log
from seglab.engine.trainer import train


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").open()]


def _log_lines(run: Path) -> list[str]:
    return (run / "train.log").read_text().splitlines()


def test_summary_eval_lines_and_closing_message_reach_console_and_train_log(
    tiny_config, tmp_path, capsys
):
    run = train(tiny_config("train.threads=1"), progress=True)
    printed = capsys.readouterr().out
    lines = _log_lines(run)
    text = "\n".join(lines)
    for expected in (
        "model: unet(width=4, depth=2",
        "trainable parameters",
        "classes: 6 (background, disc, square, triangle, ring, cross)",
        "24 train images (train), 8 val images (val), batch 4, crop 24x24",
        "device: cpu, 1 CPU thread(s), 1 process(es)",
        f"run dir: {run.resolve()}",
    ):
        assert expected in text and expected in printed, expected
    # Each line: time, the step it belongs to, then exactly what the console printed.
    assert all(line[19:].startswith(" [step ") for line in lines)
    assert [line.split("] ", 1)[1] for line in lines] == printed.strip().splitlines()
    evals = [r for r in _records(run) if "val" in r]
    scores = [r["val"]["mean_iou"] for r in evals]
    best = int(np.argmax(scores))  # the first of equal scores: "best" must strictly improve
    eval_lines = [line for line in lines if ": val mIoU " in line]
    assert [line.split("] ", 1)[1].split(":")[0] for line in eval_lines] == ["step 3", "step 6"]
    assert f"val mIoU {100 * scores[0]:.2f}, loss {evals[0]['val']['loss']:.4f}" in eval_lines[0]
    closing = lines[-1]
    assert closing.split("] ", 1)[1].startswith(
        f"done: best val mIoU {100 * scores[best]:.2f} at step {evals[best]['step']}"
    )
    meta = yaml.safe_load((run / "best.yaml").read_text())
    assert meta["best"]["step"] == evals[best]["step"]
    assert meta["best"]["mean_iou"] == round(scores[best], 6)


def test_validation_loss_and_class_iou_equal_an_independent_computation(tiny_config, shapes_root):
    from seglab.data import build_dataset
    from seglab.data.transforms import eval_transform
    from seglab.weights import load_weights

    run = train(tiny_config(), progress=False)
    last = [r for r in _records(run) if "val" in r][-1]
    assert last["step"] == 6  # the last evaluation saw the final weights
    model, _ = load_weights(run / "final.safetensors")
    model.eval()
    val = build_dataset("folder", shapes_root, "val", eval_transform())
    total, count = 0.0, 0
    intersection, union = np.zeros(6), np.zeros(6)
    with torch.no_grad():
        for index in range(len(val)):
            image, mask = val[index]
            logits = model(image[None])
            total += F.cross_entropy(logits, mask[None].long(), ignore_index=255, reduction="sum")
            count += int((mask != 255).sum())
            prediction = logits.argmax(1)[0].numpy()
            truth = mask.numpy()
            labelled = truth != 255
            for c in range(6):
                p, t = (prediction == c) & labelled, (truth == c) & labelled
                intersection[c] += (p & t).sum()
                union[c] += (p | t).sum()
    # Stated tolerance: float32 sums in another order (batched evaluation, log of softmax).
    assert math.isclose(last["val"]["loss"], float(total / count), rel_tol=1e-5)
    names = ["background", "disc", "square", "triangle", "ring", "cross"]
    assert list(last["val"]["class_iou"]) == names
    for c, name in enumerate(names):
        expected = None if union[c] == 0 else intersection[c] / union[c]
        got = last["val"]["class_iou"][name]
        assert (got is None) if expected is None else math.isclose(got, expected, rel_tol=1e-6)


def test_resume_says_so_and_train_log_is_cut_back_to_the_checkpoint(tiny_config, tmp_path):
    cfg = tiny_config()
    run = train(cfg, progress=False, stop_after=4)
    assert "stopped at step 4 of 6" in _log_lines(run)[-1]
    before = _log_lines(run)
    with (run / "train.log").open("a") as handle:  # what a session killed after step 4 left
        handle.write("2026-12-01 10:00:00 [step 5] step 5: from the killed session\n")
        handle.write("2026-12-01 10:00:00 [step 6] half a li")
    train(cfg, resume=True, progress=False)
    lines = _log_lines(run)
    assert lines[: len(before) - 1] == before[:-1]  # kept up to the checkpoint (stamped step 4)
    assert not any("killed session" in line or "half a li" in line for line in lines)
    resumed = [line for line in lines if "resumed from step 4" in line]
    assert len(resumed) == 1 and "[step 4]" in resumed[0]
    assert [line.split("] ", 1)[1].split(":")[0] for line in lines if ": val mIoU" in line] == [
        "step 3",
        "step 6",
    ]
    # The second session's summary, then its lines: the first session's closing line stays.
    assert sum("model: unet" in line for line in lines) == 2


def test_truncate_train_log_keeps_complete_lines_up_to_the_step(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(
        "2026-12-01 10:00:00 [step 0] a\n"
        "2026-12-01 10:00:01 [step 2] b\n"
        "not a stamped line\n"
        "2026-12-01 10:00:02 [step 3] c\n"
        "2026-12-01 10:00:03 [step 2] cut"
    )
    truncate_train_log(log, 2)
    assert log.read_text() == "2026-12-01 10:00:00 [step 0] a\n2026-12-01 10:00:01 [step 2] b\n"


def test_curves_are_drawn_from_the_log_and_rewritten_at_each_evaluation(tiny_config):
    records = [
        {"step": 1, "loss": 2.0, "lr": 0.1},
        {"step": 2, "loss": 1.0, "lr": 0.05},
        {"step": 2, "val": {"mean_iou": 0.25, "loss": 1.5}},
        {"step": 4, "loss": 0.5, "lr": 0.0},
        {"step": 4, "val": {"mean_iou": 0.5, "loss": 0.75}},
    ]
    series = curve_series(records)
    assert series["loss"] == [(1, 2.0), (2, 1.0), (4, 0.5)]
    assert series["val_loss"] == [(2, 1.5), (4, 0.75)]
    assert series["miou"] == [(2, 25.0), (4, 50.0)]
    picture = np.asarray(draw_curves(records))
    assert picture.shape == (PANEL[1], 3 * PANEL[0], 3)
    # The mIoU panel (third): x from step 0 to 4, y from 25 % (bottom) to 50 % (top); the line
    # from (2, 25) to (4, 50) passes through (3, 37.5), the middle of the plot's right half.
    left, right, top, bottom = _MARGIN
    x0, x1, y0, y1 = 2 * PANEL[0] + left, 3 * PANEL[0] - right, top, PANEL[1] - bottom
    x, y = round(x0 + 0.75 * (x1 - x0)), round((y0 + y1) / 2)
    window = picture[y - 2 : y + 3, x - 2 : x + 3].reshape(-1, 3)
    assert any(tuple(pixel) == (214, 96, 20) for pixel in window)  # the validation colour

    run = train(tiny_config(), progress=False, stop_after=3)
    first = np.asarray(Image.open(run / "curves.png"))
    train(tiny_config(), resume=True, progress=False)
    second = np.asarray(Image.open(run / "curves.png"))
    assert first.shape == second.shape and not np.array_equal(first, second)


@pytest.mark.parametrize("native_bf16", [True, False])
def test_the_summary_names_the_autocast_that_runs_not_the_one_asked_for(
    tiny_config, monkeypatch, native_bf16
):
    import seglab.engine.run_setup

    monkeypatch.setattr(seglab.engine.run_setup, "cpu_has_bf16", lambda: native_bf16)
    run = train(tiny_config("train.threads=1", "train.iters=1", "train.amp=true"), progress=False)
    device_line = next(line for line in _log_lines(run) if "device: cpu" in line)
    assert device_line.endswith("1 process(es), amp bfloat16" if native_bf16 else "1 process(es)")
