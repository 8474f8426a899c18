"""Stages (a) and (b) of the weak pipeline: train a CAM generator on image tags, then write
seeds and pseudo masks of the training images and score them against the true masks.

Image tags are read from ROOT/tags/NAME.txt (seglab/data/weak_labels.py, written by
`seglab data shapes --weak`). Images of one batch must share a size (cam.batch_size: 1
otherwise); the images are kept in memory decoded (small datasets: the shapes data).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from seglab.data.folder import FolderDataset, write_mask
from seglab.data.transforms import normalize_image
from seglab.data.weak_labels import read_tags, weak_label_path
from seglab.engine.run_setup import collate_same_size
from seglab.errors import SeglabError
from seglab.metrics import ConfusionMatrix
from seglab.weak.cam import pool_scores, seeds_and_pseudo_mask, tag_f1, upsample_cams
from seglab.weak.ficklenet import FickleNet
from seglab.weak.mdc import MDCNet

CAM_METHODS = {"mdc": MDCNet, "ficklenet": FickleNet}


def image_tags(dataset: FolderDataset, index: int) -> list[int]:
    """Foreground class ids tagged for image `index` (background 0 is never a tag)."""
    path = weak_label_path(dataset.root, "tags", dataset.names[index])
    if not path.is_file():
        raise SeglabError(
            f"{path} is missing; image tags live in ROOT/tags/NAME.txt (one class name a line), "
            "e.g. from `seglab data shapes --weak`"
        )
    return [c for c in read_tags(path, dataset.classes.names) if c != 0]


class TagDataset(torch.utils.data.Dataset):
    """(normalised (3, H, W) image, (K,) multi-hot tags) of a folder dataset's split."""

    def __init__(self, dataset: FolderDataset, hflip: bool = True) -> None:
        self.dataset, self.hflip = dataset, hflip
        self.num_foreground = dataset.num_classes - 1
        self.tags = [image_tags(dataset, i) for i in range(len(dataset))]
        self.cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def image(self, index: int) -> torch.Tensor:
        if index not in self.cache:
            image, _ = self.dataset.load(index)
            self.cache[index] = normalize_image(torch.from_numpy(image).permute(2, 0, 1))
        return self.cache[index]

    def __getitem__(self, index: int):
        image = self.image(index)
        if self.hflip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        tags = torch.zeros(self.num_foreground)
        tags[[c - 1 for c in self.tags[index]]] = 1
        return image, tags


def build_cam_model(method: str, num_foreground: int, options: dict) -> torch.nn.Module:
    if method not in CAM_METHODS:
        raise SeglabError(f"cam.method {method!r}: use one of {', '.join(CAM_METHODS)}")
    try:
        return CAM_METHODS[method](num_foreground, **options)
    except TypeError as error:
        raise SeglabError(f"cam.options for {method}: {error}") from None


def train_cam(model, tag_data: TagDataset, iters: int, batch_size: int, lr: float,
              weight_decay: float = 1e-4, seed: int = 0, log=None, warmup_iters: int = 0,
              amp: bool = False) -> list[float]:  # fmt: skip
    """AdamW on the summed tag losses for `iters` steps, a linear warm-up of `warmup_iters`
    then poly 0.9 decay; returns the loss of every step.

    amp: bf16 autocast and channels_last on the CPU (seglab.engine.run_setup.cpu_has_bf16:
    only where the CPU runs bf16 natively, float32 elsewhere), the demo recipe's speed-up (autocast
    runs the tag loss's BCE in float32)."""
    from seglab.engine.run_setup import cpu_has_bf16

    amp = amp and cpu_has_bf16()
    layout = torch.channels_last if amp else torch.contiguous_format
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(tag_data, batch_size, shuffle=True, drop_last=len(tag_data) > batch_size,
                        collate_fn=collate_same_size, generator=generator)  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def factor(t: int) -> float:
        return min(1.0, (t + 1) / warmup_iters if warmup_iters else 1.0) * (1 - t / iters) ** 0.9

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    model.to(memory_format=layout).train()
    losses, step = [], 0
    while step < iters:
        for images, tags in loader:
            with torch.autocast("cpu", torch.bfloat16, enabled=amp):  # BCE runs in float32
                loss = model.loss(images.contiguous(memory_format=layout), tags)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            step += 1
            if log is not None and (step % 20 == 0 or step == iters):
                log(step, loss.item())
            if step == iters:
                break
    model.to(memory_format=torch.contiguous_format)
    return losses


@torch.no_grad()
def score_tags(model, tag_data: TagDataset, batch_size: int = 50) -> dict:
    """The classifier's tags on `tag_data` (val: images it never saw) against the true ones:
    an image has class c where the branches' mean pooled score (the logit) is > 0.
    Returns seglab.weak.cam.tag_f1's {"f1": per class, "exact_match"} plus "mean_f1"."""
    model.eval()
    predicted, tags = [], []
    for start in range(0, len(tag_data), batch_size):
        indices = range(start, min(start + batch_size, len(tag_data)))
        images = torch.stack([tag_data.image(i) for i in indices])
        maps = model(images)
        logits = torch.stack([pool_scores(m, model.pooling, model.lse_r) for m in maps]).mean(0)
        predicted.append(logits > 0)
        truth = torch.zeros(len(indices), tag_data.num_foreground)
        for row, i in enumerate(indices):
            truth[row, [c - 1 for c in tag_data.tags[i]]] = 1
        tags.append(truth)
    scores = tag_f1(torch.cat(predicted), torch.cat(tags))
    return {**scores, "mean_f1": sum(scores["f1"]) / len(scores["f1"])}


def image_cams(model, tag_data: TagDataset, index: int) -> np.ndarray:
    """(K, H, W) normalised maps of one image at its own size."""
    image = tag_data.image(index)
    cams = model.cams(image[None])
    return upsample_cams(cams, tuple(image.shape[-2:]))[0].numpy()


def crf_pseudo_mask(cams: np.ndarray, tags: list[int], image: np.ndarray, bg_threshold: float,
                    preset: str = "deeplab-largefov") -> np.ndarray:  # fmt: skip
    """The pseudo mask of seeds_and_pseudo_mask refined by the dense CRF (seglab.crf), as
    MODELS_2019.md section 8 says MDC does at the end: the scores (background: the constant
    bg_threshold; each tagged class: its map) normalised per pixel into probabilities, so their
    argmax is the unrefined mask, then mean-field with the colour and smoothness kernels snaps
    the coarse CAM regions to the image's edges.
    cams: (K, H, W) in [0, 1]; image: (H, W, 3) uint8 -> (H, W) uint8 labels."""
    from seglab.crf import dense_crf_labels

    if not tags:
        return np.zeros(image.shape[:2], np.uint8)
    scores = np.stack([np.full(image.shape[:2], bg_threshold), *(cams[c - 1] for c in tags)])
    scores = np.maximum(scores, 1e-5)
    probabilities = torch.from_numpy((scores / scores.sum(0)).astype(np.float32))[None]
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    refined = dense_crf_labels(probabilities, pixels, preset)[0].numpy()
    return np.asarray([0, *tags], np.uint8)[refined]


def write_pseudo_masks(model, tag_data: TagDataset, out: Path, fg_threshold: float,
                       bg_threshold: float, crf: str | None = None) -> dict:  # fmt: skip
    """out/seeds/NAME.png and out/masks/NAME.png for every image; out/metrics.json: the
    pseudo masks' mIoU against the true masks, the seeds' precision and coverage.
    crf: a seglab.crf preset name refines the masks (crf_pseudo_mask); None leaves them."""
    dataset, colors = tag_data.dataset, tag_data.dataset.classes.colors
    (out / "seeds").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    k = dataset.num_classes
    pseudo_matrix, seed_matrix = ConfusionMatrix(k), ConfusionMatrix(k)
    labelled = total = 0
    model.eval()
    for index, name in enumerate(dataset.names):
        cams = image_cams(model, tag_data, index)
        seeds, pseudo = seeds_and_pseudo_mask(cams, tag_data.tags[index], fg_threshold,
                                              bg_threshold)  # fmt: skip
        image, truth = dataset.load(index)
        if crf is not None:
            pseudo = crf_pseudo_mask(cams, tag_data.tags[index], image, bg_threshold, crf)
        write_mask(seeds, out / "seeds" / f"{name}.png", colors)
        write_mask(pseudo, out / "masks" / f"{name}.png", colors)
        truth = torch.from_numpy(truth.astype(np.int64))
        pseudo_matrix.update(torch.from_numpy(pseudo.astype(np.int64)), truth)
        seeded = torch.from_numpy(seeds != 255)
        seed_matrix.update(torch.from_numpy(seeds.astype(np.int64))[seeded], truth[seeded])
        labelled, total = labelled + int(seeded.sum()), total + seeds.size
    pseudo_scores, seed_scores = pseudo_matrix.compute(), seed_matrix.compute()
    metrics = {
        "pseudo_mask_mean_iou": pseudo_scores["mean_iou"],
        "pseudo_mask_iou": pseudo_scores["iou"],
        "seed_pixel_accuracy": seed_scores["pixel_accuracy"],
        "seed_coverage": labelled / max(total, 1),
        "images": len(dataset),
        "fg_threshold": fg_threshold,
        "bg_threshold": bg_threshold,
        "crf": crf,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
