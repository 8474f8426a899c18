"""The evaluation loop: one dataset-wide confusion matrix, images batched where sizes allow."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable

import torch
from tqdm import tqdm

from seglab.config import InferenceConfig
from seglab.data.folder import FolderDataset
from seglab.data.images import image_size
from seglab.inference import predict_probabilities
from seglab.metrics import ConfusionMatrix


def batches_by_size(dataset: FolderDataset, batch_size: int, indices=None) -> list[list[int]]:
    """Group sample indices into batches of equal image size (sizes read from file headers)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index in indices if indices is not None else range(len(dataset)):
        size = image_size(dataset.image_path(index))  # as displayed: EXIF rotation applied
        groups.setdefault(size, []).append(index)
    return [
        group[start : start + batch_size]
        for group in groups.values()
        for start in range(0, len(group), batch_size)
    ]


FALLBACK_WINDOW = [512, 512]


def _predict_or_slide(model, images: torch.Tensor, inference: InferenceConfig) -> torch.Tensor:
    """Whole-image prediction, retried by sliding window if the device runs out of memory."""
    try:
        return predict_probabilities(model, images, inference)
    except torch.OutOfMemoryError:
        if inference.mode != "whole":
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        fallback = dataclasses.replace(
            inference, mode="slide", crop_size=FALLBACK_WINDOW, batch_size=1
        )
        warnings.warn(
            f"out of memory on a {tuple(images.shape[-2:])} image: evaluating it by sliding "
            f"window {FALLBACK_WINDOW} instead (set inference.mode=slide to do so throughout)",
            stacklevel=2,
        )
        return torch.cat([predict_probabilities(model, image[None], fallback) for image in images])


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
        probs = _predict_or_slide(model, images, inference)
        confusion.update(probs.argmax(1), masks)
        if on_batch is not None:
            on_batch(batch, images, masks, probs)
    confusion.all_reduce()
    model.train(was_training)
    return confusion
