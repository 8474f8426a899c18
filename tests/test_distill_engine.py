"""Structured distillation inside the trainer (seglab/weak/distill.py): padded pixels take no
part in any term, each term is logged in metrics.jsonl, and the critic's state in last.pt
makes a resumed run equal an uninterrupted one (the teacher is in neither file)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import seglab
from seglab.config import load_config
from seglab.data.shapes import write_shapes_dataset
from seglab.engine.trainer import train
from seglab.losses import SegmentationLoss
from seglab.models import create_model
from seglab.weak.distill import Critic, DistillationLoss, pair_distillation, pixel_distillation
from seglab.weights import save_weights


def test_pixel_term_over_valid_pixels_is_the_mean_of_the_valid_ones():
    # all valid: [SKD]'s sum / (H W); the left column valid only: per image the sum over that
    # column / 3 pixels, i.e. the same as distilling the 3x1 column alone
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 4, 3, 3, generator=generator), torch.randn(2, 4, 3, 3)
    ones = torch.ones(2, 1, 3, 3)
    assert pixel_distillation(student, teacher, gate=ones).item() == pytest.approx(
        pixel_distillation(student, teacher).item()
    )
    gate = torch.zeros(2, 1, 3, 3)
    gate[..., 0] = 1
    column = pixel_distillation(student[..., :1], teacher[..., :1])
    assert pixel_distillation(student, teacher, gate=gate).item() == pytest.approx(column.item())


def test_pair_term_leaves_out_nodes_without_valid_pixels():
    generator = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(2, 5, 4, 4, generator=generator), torch.randn(2, 3, 4, 4)
    full = torch.ones(2, 1, 4, 4)
    assert pair_distillation(student, teacher, valid=full).item() == pytest.approx(
        pair_distillation(student, teacher).item()
    )
    # right half padded: 2x2 nodes of 2x2 pixels, the right column of nodes has no valid
    # pixel, so the term is that of the left 4x2 half pooled into its 2 nodes (kernel 2x2):
    # the sum over its 2x2 node pairs / 2^2 per image, / N
    valid = torch.zeros(2, 1, 4, 4)
    valid[..., :2] = 1
    left_s, left_t = student[..., :2], teacher[..., :2]
    nodes_s, nodes_t = [torch.nn.functional.max_pool2d(x, 2) for x in (left_s, left_t)]
    cos = lambda f: torch.nn.functional.cosine_similarity(  # noqa: E731
        f.flatten(2)[:, :, :, None], f.flatten(2)[:, :, None, :], dim=1
    )
    expected = ((cos(nodes_t) - cos(nodes_s)) ** 2).sum() / 4 / 2
    assert pair_distillation(student, teacher, valid=valid).item() == pytest.approx(
        expected.item(), rel=1e-5
    )
    garbage_s, garbage_t = student.clone(), teacher.clone()
    garbage_s[..., 2:], garbage_t[..., 2:] = 50.0, -50.0
    assert pair_distillation(garbage_s, garbage_t, valid=valid).item() == pytest.approx(
        expected.item(), rel=1e-5
    )


def _teacher(tmp_path, classes=3):
    teacher = create_model("unet", classes, 3, width=4, depth=1, padding="same")
    path = tmp_path / "teacher.safetensors"
    save_weights(teacher, path)
    return path


def test_padded_pixels_get_no_gradient_from_any_term(tmp_path):
    torch.manual_seed(0)
    student = create_model("unet", 3, 3, width=4, depth=1, padding="same")
    loss_fn = DistillationLoss(SegmentationLoss(), {"teacher": str(_teacher(tmp_path))},
                               student, "cpu")  # fmt: skip
    images, target = torch.randn(2, 3, 16, 16), torch.randint(3, (2, 16, 16))
    valid = torch.ones(2, 16, 16, dtype=torch.bool)
    valid[:, 10:] = False  # the bottom rows are crop padding: labels 255 there, as trained
    target[~valid] = 255
    for _ in range(2):  # the second call also steps the critic on the first's (zeroed) logits
        outputs = student(images).detach().requires_grad_(True)
        loss = loss_fn(outputs, target, images=images, valid=valid)
        loss.backward()
    assert outputs.grad[:, :, 10:].abs().max() == 0 and outputs.grad[:, :, :10].abs().max() > 0
    assert loss_fn.pending[0][:, :, 10:].abs().max() == 0  # the critic sees no padding
    names = ("task", "pixel", "pair", "holistic", "critic")
    assert set(loss_fn.logged_terms()) == {f"distill_{k}" for k in names}


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    write_shapes_dataset(root / "data", train=4, val=2, size=32, progress=False)
    options = "model.options={width: 4, depth: 2, padding: same}"
    overrides = [*_common(root / "data"), f"run_dir={root / 'teacher'}", options]
    run = seglab.train(None, overrides, progress=False)
    return root / "data", run


def _common(data):
    return [f"data.root={data}", "data.batch_size=2", "train.tensorboard=false",
            "model.name=unet", "train.iters=2", "train.eval_every=2"]  # fmt: skip


def _student(data, teacher, run_dir):
    return load_config(None, [
        *_common(data), f"run_dir={run_dir}",
        "model.options={width: 4, depth: 1, padding: same, dropout: 0.2}",
        "train.iters=4", "train.eval_every=4", "train.log_every=1", "train.checkpoint_every=2",
        "data.crop_size=[36,36]", "data.scale_range=[0.8,1.2]",  # padded crops
        f"distill={{teacher: {teacher}, holistic: 0.1, d_channels: 8}}",  # a small critic
    ])  # fmt: skip


def _train_records(run):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


def test_resumed_distillation_equals_an_uninterrupted_run(teacher_run, tmp_path):
    data, teacher = teacher_run
    straight = train(_student(data, teacher, tmp_path / "a"), progress=False)
    split_cfg = _student(data, teacher, tmp_path / "b")
    train(split_cfg, progress=False, stop_after=2)
    state = torch.load(tmp_path / "b" / "last.pt", weights_only=True)
    plain = create_model("unet", 6, 3, width=4, depth=1, padding="same")
    assert set(state["model"]) == set(plain.state_dict())  # the student alone
    assert set(state["critic"]["model"]) == set(Critic(6).state_dict())
    assert state["critic"]["optimizer"]["state"] and len(state["critic"]["pending"]) == 2
    split = train(split_cfg, resume=True, progress=False)
    a, b = (
        load_file(str(straight / "final.safetensors")),
        load_file(str(split / "final.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    records = _train_records(straight)
    assert records == [{**r, "images_per_s": records[i]["images_per_s"]}
                       for i, r in enumerate(_train_records(split))]  # fmt: skip
    # every step logs the unweighted terms; the loss is their sum with [SKD]'s weights
    for r in records:
        total = (r["distill_task"] + 10 * r["distill_pixel"] + 1.0 * r["distill_pair"]
                 + 0.1 * r["distill_holistic"])  # fmt: skip
        assert r["loss"] == pytest.approx(total, abs=2e-4)
    assert "distill_critic" not in records[0] and all("distill_critic" in r for r in records[1:])
    val = [json.loads(x)["val"] for x in (straight / "metrics.jsonl").open() if '"val"' in x]
    assert 0 <= val[-1]["boundary_f"] <= 1
