"""Structured knowledge distillation (seglab/weak/distill.py): the three terms against
hand-worked cases, the frozen teacher kept out of the student's weights, a distilled run."""

from __future__ import annotations

import math

import pytest
import torch

from seglab.errors import SeglabError
from seglab.models import create_model
from seglab.weak.distill import (
    DistillationLoss,
    gradient_penalty,
    node_affinity,
    pair_distillation,
    pixel_distillation,
    pool_nodes,
)
from seglab.weights import save_weights


def test_pixel_distillation_by_hand():
    # 1 x 2 logit map, 2 classes. Teacher: pixel 1 (0, 0) -> (1/2, 1/2); pixel 2 (ln 3, 0) ->
    # (3/4, 1/4). Student: (0, ln 3) -> (1/4, 3/4); (0, 0) -> (1/2, 1/2).
    # sum -p_T log p_S = [-(1/2 ln 1/4 + 1/2 ln 3/4)] + [-(3/4 ln 1/2 + 1/4 ln 1/2)], / (H W = 2)
    teacher = torch.tensor([[[[0.0, math.log(3)]], [[0.0, 0.0]]]])
    student = torch.tensor([[[[0.0, 0.0]], [[math.log(3), 0.0]]]])
    expected = (-(0.5 * math.log(0.25) + 0.5 * math.log(0.75)) + math.log(2)) / 2
    assert pixel_distillation(student, teacher).item() == pytest.approx(expected, rel=1e-5)
    # = KL(T || S) + H(T) per pixel, / (H W): the KL by hand plus the teacher's entropy
    kl = (0.5 * math.log(2) + 0.5 * math.log(0.5 / 0.75)) + (
        0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    )
    entropy = math.log(2) - (0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert expected == pytest.approx((kl + entropy) / 2)


def test_pool_nodes_max_pools_with_half_the_size_as_kernel():
    features = torch.arange(16.0).view(1, 1, 4, 4)
    assert pool_nodes(features, 0.5).tolist() == [[[[5.0, 7.0], [13.0, 15.0]]]]


def test_pair_distillation_on_a_hand_made_2x2_feature_map():
    # scale 0.5 of a 2 x 2 map: kernel 1, the 4 pixels are the nodes.
    # student nodes (1,0), (0,1), (1,1), (1,0); teacher nodes all (1,0): a^T_ij = 1.
    # a^S off-diagonal: (1,2) 0, (1,3) 1/sqrt2, (1,4) 1, (2,3) 1/sqrt2, (2,4) 0, (3,4) 1/sqrt2;
    # sum_ij (1 - a^S_ij)^2 = 2 * (1 + 1 + 3 (1 - 1/sqrt2)^2); / (h'w')^2 = 16; / N = 1
    student = torch.tensor([[[[1.0, 0], [1, 1]], [[0.0, 1], [1, 0]]]])
    teacher = torch.tensor([[[[2.0, 2], [2, 2]], [[0.0, 0], [0, 0]]]])
    expected = 2 * (2 + 3 * (1 - 1 / math.sqrt(2)) ** 2) / 16
    assert pair_distillation(student, teacher, 0.5).item() == pytest.approx(expected, rel=1e-5)
    affinity = node_affinity(student)[0]
    assert affinity[0, 2].item() == pytest.approx(1 / math.sqrt(2), rel=1e-5)


def test_pair_distillation_ignores_feature_scale_and_channel_count():
    torch.manual_seed(0)
    student = torch.randn(2, 3, 8, 8)
    assert pair_distillation(student, 5 * student).item() == pytest.approx(0, abs=1e-6)
    # the teacher's 7 channels: the affinity compares nodes within each network only
    assert pair_distillation(student, torch.randn(2, 7, 8, 8)).item() > 0


def test_gradient_penalty_of_a_linear_critic_is_its_weight_norm_minus_one_squared():
    real, fake = torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2)
    for value, norm in ((0.5, 1.0), (1.0, 2.0)):  # ||w|| = sqrt(4 value^2)
        weight = torch.full((1, 1, 2, 2), value)
        penalty = gradient_penalty(lambda x, w=weight: (x * w).sum(dim=(1, 2, 3)), real, fake)
        assert penalty.item() == pytest.approx((norm - 1) ** 2, abs=1e-6)


def _models(tmp_path, teacher_classes: int = 3):
    torch.manual_seed(0)
    teacher = create_model("unet", teacher_classes, 3, width=8, depth=2)
    save_weights(teacher, tmp_path / "teacher.safetensors")
    student = create_model("unet", 3, 3, width=4, depth=2)
    return student, tmp_path / "teacher.safetensors"


class _Task(torch.nn.Module):
    def forward(self, outputs, target, pixel_weights=None, images=None):
        return torch.nn.functional.cross_entropy(outputs, target)


def test_distillation_loss_adds_the_weighted_terms_and_keeps_the_teacher_frozen(tmp_path):
    student, teacher_path = _models(tmp_path)
    loss_fn = DistillationLoss(_Task(), {"teacher": str(teacher_path)}, student, "cpu")
    teacher_before = {k: v.clone() for k, v in loss_fn.teacher.state_dict().items()}
    critic_before = {k: v.clone() for k, v in loss_fn.critic.state_dict().items()}
    images, target = torch.randn(2, 3, 16, 16), torch.randint(3, (2, 16, 16))
    for _ in range(2):  # the second call steps the critic on the first call's logits
        student.train()
        outputs = student(images)
        loss = loss_fn(outputs, target, images=images)
        loss.backward()
    with torch.no_grad():
        teacher_logits = loss_fn.teacher(images)
    task = torch.nn.functional.cross_entropy(outputs, target)
    pixel = pixel_distillation(outputs, teacher_logits)
    pair = pair_distillation(loss_fn.features["student"], loss_fn.features["teacher"])
    holistic = -loss_fn.critic(outputs).mean()
    expected = task + 10 * pixel + 1.0 * pair + 0.1 * holistic  # [SKD]'s weights
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert not loss_fn.teacher.training
    assert all(p.grad is None and not p.requires_grad for p in loss_fn.teacher.parameters())
    assert all(torch.equal(v, teacher_before[k]) for k, v in loss_fn.teacher.state_dict().items())
    assert any(not torch.equal(v, critic_before[k]) for k, v in loss_fn.critic.state_dict().items())
    assert all(p.grad is not None for p in student.parameters() if p.requires_grad)
    assert set(loss_fn.terms) == {"task", "pixel", "pair", "holistic", "critic"}


def test_distillation_options_are_checked(tmp_path):
    student, teacher_path = _models(tmp_path, teacher_classes=4)
    with pytest.raises(SeglabError, match="4 classes, the student 3"):
        DistillationLoss(_Task(), {"teacher": str(teacher_path)}, student, "cpu")
    with pytest.raises(SeglabError, match="distill.pixle is not an option"):
        DistillationLoss(_Task(), {"teacher": str(teacher_path), "pixle": 1}, student, "cpu")
    with pytest.raises(SeglabError, match="weights file not found"):
        DistillationLoss(_Task(), {"teacher": str(tmp_path / "no.safetensors")}, student, "cpu")


def test_a_distilled_run_saves_the_student_alone(tmp_path):
    import seglab
    from seglab.config import load_config
    from seglab.data.shapes import write_shapes_dataset
    from seglab.weights import load_weights

    write_shapes_dataset(tmp_path / "data", train=4, val=2, size=32, progress=False)
    common = [f"data.root={tmp_path / 'data'}", "train.iters=2", "train.eval_every=2",
              "data.batch_size=2", "train.tensorboard=false", "model.name=unet",
              "model.options={width: 4, depth: 2}"]  # fmt: skip
    teacher_run = seglab.train(None, [*common, f"run_dir={tmp_path / 'teacher'}"], progress=False)
    cfg = load_config(None, [*common, f"run_dir={tmp_path / 'student'}",
                             f"distill={{teacher: {teacher_run}, holistic: 0.1}}"])  # fmt: skip
    cfg.model.options = {"width": 4, "depth": 1}  # a smaller student than its teacher
    student_run = seglab.train(cfg, progress=False)
    student, _ = load_weights(student_run / "best.safetensors")
    plain = create_model("unet", 3, 3, width=4, depth=1)
    assert set(student.state_dict()) == set(plain.state_dict())  # no teacher, no critic
    state = torch.load(student_run / "last.pt", weights_only=False)
    assert set(state["model"]) == set(plain.state_dict())
