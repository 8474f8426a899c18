"""The evaluation loop: one dataset-wide confusion matrix, images batched where sizes allow."""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from tqdm import tqdm

from seglab.config import InferenceConfig
from seglab.data.folder import FolderDataset
from seglab.inference import predict_probabilities
from seglab.metrics import ConfusionMatrix


def batches_by_size(dataset: FolderDataset, batch_size: int, indices=None) -> list[list[int]]:
    """Group sample indices into batches of equal image size (sizes read from file headers)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index in indices if indices is not None else range(len(dataset)):
        with Image.open(dataset.image_path(index)) as image:
            groups.setdefault(image.size, []).append(index)
    return [
        group[start : start + batch_size]
        for group in groups.values()
        for start in range(0, len(group), batch_size)
    ]


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: FolderDataset,
    device: torch.device,
    inference: InferenceConfig | None = None,
    progress: bool = True,
    indices=None,
    on_batch: Callable[[list[int], torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
) -> ConfusionMatrix:
    """Confusion matrix of `model` over `dataset` (transform: eval_transform).

    on_batch(indices, images, masks, probabilities) sees every batch (the report's overlays,
    the CRF comparison) without a second pass over the data.
    """
    inference = inference or InferenceConfig()
    was_training = model.training
    model.eval()
    confusion = ConfusionMatrix(dataset.num_classes, device)
    batches = batches_by_size(dataset, inference.batch_size, indices)
    for batch in tqdm(batches, desc="evaluating", unit="batch", disable=not progress, leave=False):
        samples = [dataset[i] for i in batch]
        images = torch.stack([s[0] for s in samples]).to(device)
        masks = torch.stack([s[1] for s in samples]).to(device)
        probs = predict_probabilities(model, images, inference)
        confusion.update(probs.argmax(1), masks)
        if on_batch is not None:
            on_batch(batch, images, masks, probs)
    confusion.all_reduce()
    model.train(was_training)
    return confusion
