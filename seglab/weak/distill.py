"""Structured knowledge distillation: Liu et al., "Structured Knowledge Distillation for
Semantic Segmentation", CVPR 2019 (arXiv 1903.04197); official code [SKD]
irfanICMLL/structure_knowledge_distillation @ ce208e1 (MODELS_2019.md section 10).

The student trains on   task + pixel * L_pi + pair * L_pa + holistic * L_ho   with, as [SKD]:
  - L_pi (utils/criterion.py CriterionPixelWise): sum over pixels (and the batch) of
    -softmax(z_T / t) . log_softmax(z_S / t), divided by W * H of the logit map (t = 1 in the
    code: no temperature). It equals KL(T || S) plus the teacher's entropy, so its gradient is
    the KL's (their issue #45).
  - L_pa (CriterionPairWiseforWholeFeatAfterPool, scale 0.5, on the features that enter the
    classifier, `feat_after_psp`): each map max-pooled with kernel = stride = scale x its size
    (ceil mode; 2 x 2 nodes for 0.5), a_ij = cos(f_i, f_j) over the nodes, and
    L_pa = sum_ij (a^T_ij - a^S_ij)^2 / (h'w')^2 / N.
  - L_ho: a Wasserstein critic D on the logit maps (networks/sagan_models.py: spectral-norm
    4x4 stride-2 convs and self-attention), WGAN-GP with lambda_gp = 10; the student's term is
    -D(S); D's loss is holistic * (D(S) - D(T) + lambda_gp * GP), its optimizer SGD lr 4e-4
    (run_train_val.sh; momentum 0.9, wd 5e-4).
Weights (utils/train_options.py): pixel 10, pair 1.0 (run_train_val.sh: 0.5), holistic 0.1.

In seglab this is the trainer's criterion: `distill:` in the config wraps the task loss
(engine/trainer.py). The teacher (a seglab weights file or run directory) lives in the
criterion, frozen and in eval mode, so it is never in the student's weights or checkpoints.
The critic steps at the start of the next call, on the previous step's logits (the official
order: G step, then D step on the same predictions), so the student's graph never sees D change.
The critic, its optimizer and those pending logits are the trainer's `critic` entry of last.pt
(critic_state), so --resume continues exactly; the teacher is in neither file. Each step's
terms go to metrics.jsonl as distill_task, distill_pixel, distill_pair, distill_holistic
(unweighted) and distill_critic (the critic's weighted loss, from the step before).
Padded pixels of a training crop (`valid`, seglab/data/weak_training.py) take no part: the
pixel term sums the fully valid logit pixels over their number per image, the pair term leaves
out nodes without a valid feature pixel, and the critic sees both logit maps zeroed there.
With every pixel valid each term is [SKD]'s. Deviation: the critic's size is scaled by
`d_channels` (64 in [SKD]) and BN preprocessing of its input is left out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

from seglab.errors import SeglabError
from seglab.losses_weak import valid_gate

DEFAULTS = {
    "teacher": None, "pixel": 10.0, "pair": 1.0, "holistic": 0.1, "temperature": 1.0,
    "pool_scale": 0.5, "lambda_gp": 10.0, "d_lr": 4e-4, "d_channels": 64,
    "student_layer": None, "teacher_layer": None,
}  # fmt: skip


def pixel_distillation(student: torch.Tensor, teacher: torch.Tensor, t: float = 1.0,
                       gate: torch.Tensor | None = None):  # fmt: skip
    """(N, K, H, W) logits each -> sum(-softmax(T/t) * log_softmax(S/t)) / (H * W); with an
    (N, 1, H, W) 0/1 gate the sum runs over gated pixels, / (their number / N)."""
    h, w = student.shape[-2:]
    cross = -(F.softmax(teacher / t, dim=1) * F.log_softmax(student / t, dim=1))
    if gate is None:
        return cross.sum() / (h * w)
    return (cross * gate).sum() / (gate.sum() / student.shape[0]).clamp(min=1)


def pool_nodes(features: torch.Tensor, scale: float) -> torch.Tensor:
    """(N, C, H, W) -> (N, C, h', w'): max-pooled with kernel = stride = scale * size."""
    h, w = features.shape[-2:]
    kernel = (max(1, int(h * scale)), max(1, int(w * scale)))
    return F.max_pool2d(features, kernel, kernel, ceil_mode=True)


def _valid_nodes(features, valid, scale):
    """Nodes of features whose valid (N, 1, H0, W0) pixels alone are pooled, 0 where a node
    has none, and (N, h'w') which nodes have some."""
    gate = valid_gate(valid, features.shape[-2:]) > 0
    nodes = pool_nodes(features.masked_fill(~gate, float("-inf")), scale)
    present = pool_nodes(gate.float(), scale) > 0
    return nodes.masked_fill(~present, 0.0), present.flatten(1)


def node_affinity(nodes: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> (N, hw, hw): cosine similarity of every pair of node features."""
    flat = nodes.flatten(2)
    flat = flat / (flat.norm(dim=1, keepdim=True) + 1e-8)
    return torch.einsum("nci,ncj->nij", flat, flat)


def pair_distillation(student: torch.Tensor, teacher: torch.Tensor, scale: float = 0.5,
                      valid: torch.Tensor | None = None):  # fmt: skip
    """sum_ij (a^T_ij - a^S_ij)^2 / (h'w')^2 / N over the pooled nodes (channels may differ).
    valid: (N, 1, H, W) 0/1 input pixels; then only nodes with valid pixels (each pooled over
    those alone), the sum over their pairs / their number^2 per image."""
    if valid is None:
        s_nodes, t_nodes = pool_nodes(student, scale), pool_nodes(teacher, scale)
        present = None
    else:
        s_nodes, present = _valid_nodes(student, valid, scale)
        t_nodes, _ = _valid_nodes(teacher, valid, scale)
    if t_nodes.shape[-2:] != s_nodes.shape[-2:]:  # another output stride: the student's grid
        t_nodes = F.adaptive_max_pool2d(t_nodes, s_nodes.shape[-2:])
    error = (node_affinity(t_nodes) - node_affinity(s_nodes)) ** 2
    if present is None:
        nodes = s_nodes.shape[-2] * s_nodes.shape[-1]
        return error.sum() / nodes**2 / student.shape[0]
    pairs = (present[:, :, None] & present[:, None, :]).float()
    per_image = (error * pairs).sum((1, 2)) / pairs.sum((1, 2)).clamp(min=1)
    return per_image.sum() / student.shape[0]


class SelfAttention(nn.Module):
    """SAGAN's self-attention: x + gamma * softmax(q^T k) v, gamma starting at 0."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.query = nn.Conv2d(channels, max(1, channels // 8), 1)
        self.key = nn.Conv2d(channels, max(1, channels // 8), 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        attention = torch.softmax(
            self.query(x).flatten(2).transpose(1, 2) @ self.key(x).flatten(2), dim=-1
        )  # (N, hw, hw)
        out = (self.value(x).flatten(2) @ attention.transpose(1, 2)).view(n, c, h, w)
        return x + self.gamma * out


class Critic(nn.Module):
    """(N, K, H, W) logit maps -> (N,) Wasserstein scores: four spectral-norm 4x4 stride-2
    convs (LeakyReLU 0.1) with self-attention after the last two, then a 1-channel conv."""

    def __init__(self, num_classes: int, channels: int = 64) -> None:
        super().__init__()
        widths = [num_classes, channels, channels * 2, channels * 4, channels * 8]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [spectral_norm(nn.Conv2d(widths[i], widths[i + 1], 4, 2, 1)),
                       nn.LeakyReLU(0.1)]  # fmt: skip
            if i >= 2:
                layers.append(SelfAttention(widths[i + 1]))
        self.body = nn.Sequential(*layers)
        self.score = nn.Conv2d(widths[-1], 1, 1)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.score(self.body(logits)).mean(dim=(1, 2, 3))


def gradient_penalty(critic: Critic, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """WGAN-GP: mean (||grad D(x)||_2 - 1)^2 at random interpolates of real and fake."""
    alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def classifier_input(model: nn.Module, num_classes: int, name: str | None) -> nn.Module:
    """The module whose input is the distilled feature map: `name` (dotted), or the last
    Conv2d with num_classes outputs (the classifier; its input is e.g. PSPNet's feat_after_psp)."""
    if name is not None:
        try:
            return model.get_submodule(name)
        except AttributeError:
            raise SeglabError(f"distill: no module {name!r} in the model; name a submodule "
                              "whose input is the feature map to distil") from None  # fmt: skip
    convs = [
        m for m in model.modules() if isinstance(m, nn.Conv2d) and m.out_channels == num_classes
    ]
    if not convs:
        raise SeglabError(
            "distill: no classifier conv found; set distill.student_layer/teacher_layer"
        )
    return convs[-1]


class DistillationLoss(nn.Module):
    """task_loss(outputs, target, ...) + the three SKD terms against a frozen teacher."""

    def __init__(self, task_loss: nn.Module, options: dict, student: nn.Module, device) -> None:
        super().__init__()
        from seglab.runs import resolve_weights
        from seglab.weights import load_weights

        unknown = set(options) - set(DEFAULTS)
        if unknown:
            raise SeglabError(
                f"distill.{sorted(unknown)[0]} is not an option; use {', '.join(DEFAULTS)}"
            )
        self.o = {**DEFAULTS, **options}
        if not self.o["teacher"]:
            raise SeglabError(
                "distill.teacher must name the teacher's weights file or run directory"
            )
        teacher, meta = load_weights(resolve_weights(self.o["teacher"], "distill.teacher: "))
        num_classes = student.seglab_spec["num_classes"]
        if meta["num_classes"] != num_classes:
            raise SeglabError(
                f"distill.teacher has {meta['num_classes']} classes, the student "
                f"{num_classes}; distil between models of the same classes"
            )
        self.task_loss = task_loss
        self.teacher = teacher.to(device).eval().requires_grad_(False)
        self.features: dict[str, torch.Tensor] = {}
        for who, net in (("student", student), ("teacher", self.teacher)):
            layer = classifier_input(net, num_classes, self.o[f"{who}_layer"])
            layer.register_forward_pre_hook(self._keep(who))
        self.critic = Critic(num_classes, self.o["d_channels"]).to(device)
        self.critic_optimizer = torch.optim.SGD(
            self.critic.parameters(), self.o["d_lr"], momentum=0.9, weight_decay=5e-4
        )
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self.terms: dict[str, float] = {}

    def _keep(self, who: str):
        def hook(module, inputs):
            self.features[who] = inputs[0]

        return hook

    def critic_step(self, student: torch.Tensor, teacher: torch.Tensor) -> float:
        """One SGD step of the critic on detached logits (float32, outside autocast)."""
        with torch.autocast(student.device.type, enabled=False):
            fake, real = student.float(), teacher.float()
            loss = self.critic(fake).mean() - self.critic(real).mean()
            loss = self.o["holistic"] * (
                loss + self.o["lambda_gp"] * gradient_penalty(self.critic, real, fake)
            )
            self.critic_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.critic_optimizer.step()
        return loss.item()

    def forward(self, outputs, target, pixel_weights=None, images=None, valid=None):
        """valid: (N, H, W) bool, False where a crop padded the images (left out)."""
        if images is None:
            raise ValueError("DistillationLoss needs images= (the teacher's input)")
        holistic = self.o["holistic"]
        if holistic and self.pending is not None:
            self.terms["critic"] = self.critic_step(*self.pending)
        extra = {} if valid is None else {"valid": valid}
        loss = self.task_loss(outputs, target, pixel_weights, images=images, **extra)
        self.terms["task"] = loss.item()
        student = outputs if isinstance(outputs, torch.Tensor) else outputs["out"]
        self.teacher.eval()
        with torch.no_grad():
            teacher = self.teacher(images)
        teacher = F.interpolate(teacher, student.shape[-2:], mode="bilinear", align_corners=False)
        valid = None if valid is None else valid[:, None].float()
        gate = None if valid is None else valid_gate(valid, student.shape[-2:])
        if self.o["pixel"]:
            term = pixel_distillation(student, teacher, self.o["temperature"], gate)
            loss, self.terms["pixel"] = loss + self.o["pixel"] * term, term.item()
        if self.o["pair"]:
            term = pair_distillation(
                self.features["student"], self.features["teacher"], self.o["pool_scale"], valid
            )
            loss, self.terms["pair"] = loss + self.o["pair"] * term, term.item()
        if holistic:
            if gate is not None:  # the critic sees no padded pixel of either map
                student, teacher = student * gate, teacher * gate
            self.critic.requires_grad_(False)  # the student's term moves the student only
            term = -self.critic(student.float()).mean()
            self.critic.requires_grad_(True)
            loss, self.terms["holistic"] = loss + holistic * term, term.item()
            self.pending = (student.detach(), teacher.detach())
        return loss

    def logged_terms(self) -> dict[str, float]:
        """The last call's terms for metrics.jsonl: distill_task, distill_pixel, ..."""
        return {f"distill_{key}": value for key, value in self.terms.items()}

    def critic_state(self) -> dict:
        """The critic, its optimizer and the logits it steps on next (plain data for last.pt)."""
        pending = None if self.pending is None else list(self.pending)
        return {"model": self.critic.state_dict(), "optimizer": self.critic_optimizer.state_dict(),
                "pending": pending}  # fmt: skip

    def load_critic_state(self, state: dict) -> None:
        self.critic.load_state_dict(state["model"])
        self.critic_optimizer.load_state_dict(state["optimizer"])
        device = next(self.critic.parameters()).device
        pending = state["pending"]
        self.pending = None if pending is None else tuple(t.to(device) for t in pending)
