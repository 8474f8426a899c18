"""Mask R-CNN through the trainer's DDP and AMP paths (on the CPU: gloo, bf16 autocast, and the
fp16 + gradient-scaler path a GPU takes, as far as the CPU runs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("pycocotools", reason="COCO AP needs pycocotools: pip install seglab[coco]")

from seglab.config import load_config, save_config  # noqa: E402
from seglab.data.shapes import write_shapes_dataset  # noqa: E402
from seglab.engine.trainer import train  # noqa: E402

LOSS_TERMS = ["loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"]


@pytest.fixture(scope="module")
def twin_scenes(tmp_path_factory) -> Path:
    """A COCO split of one 48 px shapes scene listed twice (two image ids, one file).

    Why twins: torchvision's losses are means over the batch's sampled anchors, RoIs and mask
    pixels, whose counts differ between scenes, so one process on images (A, B) and two ranks
    on A and B average differently. On (A, A) each rank's mean is the batch's mean, and DDP's
    average of the two ranks' gradients is then exactly the one-process gradient.
    """
    root = tmp_path_factory.mktemp("twins")
    write_shapes_dataset(root, train=1, val=1, size=48, progress=False, instances=True)
    path = root / "annotations" / "instances_train.json"
    data = json.loads(path.read_text())
    (image,) = data["images"]
    twin = {**image, "id": image["id"] + 1}
    copies = [
        {**a, "id": a["id"] + 1000, "image_id": twin["id"]}
        for a in data["annotations"]
        if a["image_id"] == image["id"]
    ]
    data["images"].append(twin)
    data["annotations"] += copies
    path.write_text(json.dumps(data))
    return root


def _config(root: Path, run_dir: Path, *overrides: str):
    """2 steps of a width-16 ResNet-18 Mask R-CNN at 64 px, deterministic per image:
    FrozenBatchNorm (no per-rank batch statistics; identity statistics from scratch), no
    flips, and sampling sizes above the anchor and RoI counts, so that torchvision's random
    samplers take every candidate (their draws differ between processes)."""
    options = (
        "{backbone: resnet18, width: 16, min_size: 64, max_size: 64, frozen_bn: true,"
        " rpn_batch_size_per_image: 100000, box_batch_size_per_image: 100000,"
        " rpn_pre_nms_top_n: [200, 50], rpn_post_nms_top_n: [100, 50]}"
    )
    return load_config(
        "configs/maskrcnn_shapes.yaml",
        [
            f"data.root={root}",
            f"run_dir={run_dir}",
            f"model.options={options}",
            "data.batch_size=2",
            "data.hflip=false",
            "data.val_split=train",
            "optim.name=sgd",
            "optim.momentum=0.9",
            "optim.lr=0.01",
            "optim.warmup_iters=0",
            "optim.milestones=[10]",
            "train.iters=2",
            "train.eval_every=2",
            "train.log_every=1",
            "train.checkpoint_every=2",
            "train.threads=1",
            "train.tensorboard=false",
            *overrides,
        ],
    )


def _steps(run: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    return [line for line in lines if "loss" in line]


def test_two_gloo_processes_give_the_single_process_losses_and_weights(twin_scenes, tmp_path):
    train(_config(twin_scenes, tmp_path / "single"), progress=False)
    config = tmp_path / "ddp.yaml"
    save_config(_config(twin_scenes, tmp_path / "ddp"), config)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", "-m", "seglab", "--quiet", "train", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    single, double = _steps(tmp_path / "single"), _steps(tmp_path / "ddp")
    assert [s["step"] for s in double] == [1, 2]  # rank 0 alone writes the log
    for one, two in zip(single, double, strict=True):  # each term averaged over the ranks
        for key in ["loss", *LOSS_TERMS]:
            assert two[key] == pytest.approx(one[key], rel=1e-4), key
    assert single[1]["loss"] != pytest.approx(single[0]["loss"], rel=1e-3)  # step 1 moved it
    # The initial weights: the same run at lr 0 (frozen BN: no statistics move either).
    train(_config(twin_scenes, tmp_path / "start", "optim.lr=0.0"), progress=False)
    start = load_file(str(tmp_path / "start" / "final.safetensors"))
    a = load_file(str(tmp_path / "single" / "final.safetensors"))
    b = load_file(str(tmp_path / "ddp" / "final.safetensors"))
    assert a.keys() == b.keys() == start.keys()
    assert (
        a["roi_heads.mask_predictor.mask_fcn_logits.weight"]
        != start["roi_heads.mask_predictor.mask_fcn_logits.weight"]
    ).any()  # trained
    for key in a:  # the two runs' updates agree to float summation order (1e-3 of their size)
        update, gap = (a[key] - start[key]).norm(), (a[key] - b[key]).norm()
        assert gap <= 1e-3 * update + 1e-8, (key, gap.item(), update.item())


def _autocast_dtypes(monkeypatch) -> list[torch.dtype]:
    """The dtype of every box-head output of the run (torchvision's TwoMLPHead)."""
    from torchvision.models.detection.faster_rcnn import TwoMLPHead

    seen, real = [], TwoMLPHead.forward

    def forward(self, x):
        out = real(self, x)
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(TwoMLPHead, "forward", forward)
    return seen


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_amp_trains_mask_rcnn_in_half_precision(twin_scenes, tmp_path, monkeypatch, dtype):
    """bf16 is the CPU's autocast; float16 takes the GPU's path (autocast to fp16 and the
    gradient scaler) on the CPU's fp16 kernels. The heads run in the half type, the weights
    stay float32 and the losses finite."""
    seen = _autocast_dtypes(monkeypatch)
    run = train(
        _config(twin_scenes, tmp_path / "run", "train.amp=true", f"train.amp_dtype={dtype}"),
        progress=False,
    )
    assert getattr(torch, dtype) in seen
    steps = _steps(run)
    assert len(steps) == 2 and all(torch.isfinite(torch.tensor(s["loss"])) for s in steps)
    state = torch.load(run / "last.pt", weights_only=False)
    assert ("scale" in state["scaler"]) == (dtype == "float16")  # the scaler ran for fp16 only
    weights = load_file(str(run / "final.safetensors"))
    assert all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in weights.values())
