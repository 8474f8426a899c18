"""What the trainer does differently for a model of task "instance" (Mask R-CNN): batches are
lists (images of any size, one target dict each), the model computes its own losses, and
validation is COCO mask AP. The trainer dispatches on `model.task`; everything else (the
optimizer, schedule, resume, DDP, AMP, logs) is the semantic path itself.
"""

from __future__ import annotations

import torch

from seglab.errors import SeglabError

TARGET_TENSORS = ("boxes", "labels", "masks")


def dataset_task(dataset) -> str:
    """ "instance" for a dataset of instance targets (data.format coco), else "semantic"."""
    return getattr(dataset, "task", "semantic")


def check_task(model_name: str, model_task: str, data_format: str, dataset) -> None:
    """A model trains only on data of its task: one line naming both when they differ."""
    task = dataset_task(dataset)
    if task != model_task:
        fix = "data.format coco" if model_task == "instance" else "a semantic layout (folder, ...)"
        raise SeglabError(
            f"model {model_name!r} is a {model_task} model but data.format {data_format!r} "
            f"holds {task} labels; use {fix}, or a {task} model"
        )


def collate_instances(samples: list) -> tuple[list[torch.Tensor], list[dict]]:
    """[(image, target), ...] -> ([images], [targets]): images keep their own sizes (the model
    batches them after its resize)."""
    images, targets = zip(*samples, strict=True)
    return list(images), list(targets)


def instance_losses(net, batch, device: torch.device) -> dict[str, torch.Tensor]:
    """The model's loss dict on a micro-batch ([images], [targets]) (loss_classifier,
    loss_box_reg, loss_mask, loss_objectness, loss_rpn_box_reg for Mask R-CNN)."""
    images, targets = batch
    images = [image.to(device, non_blocking=True) for image in images]
    targets = [
        {key: target[key].to(device, non_blocking=True) for key in TARGET_TENSORS}
        for target in targets
    ]
    return net(images, targets)


def evaluate_instances_during_training(model, val_set, device: torch.device) -> dict:
    """COCO AP on the whole val split (every rank computes the same, so all agree on the best
    checkpoint without gathering detections)."""
    from seglab.engine.instance_eval import evaluate_instances

    return evaluate_instances(model, val_set, device, progress=False)["summary"]
