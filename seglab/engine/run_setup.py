"""What the trainer builds before its first step: settings checked, data, model, loss, loader.

Every user mistake found here is a one-line SeglabError raised before anything is trained.
"""

from __future__ import annotations

import sys
import warnings

import torch
from torch.utils.data import DataLoader, default_collate

from seglab.config import Config
from seglab.data import build_dataset, dataset_class
from seglab.data.folder import FolderDataset, check_dataset
from seglab.data.folder_layout import data_layout
from seglab.data.images import set_max_image_pixels
from seglab.data.transforms import eval_transform, train_transform
from seglab.engine.distributed import World
from seglab.engine.instance_step import check_task, collate_instances, dataset_task
from seglab.engine.sampler import TrainSampler
from seglab.errors import SeglabError
from seglab.head_start import load_matching_weights
from seglab.losses import SegmentationLoss, dataset_median_frequency_weights
from seglab.models import SegmentationModel, create_model
from seglab.models.registry import FIXED_ARGUMENTS, model_info

SIZES_DIFFER = "images of different sizes in one batch ({}); set data.crop_size (e.g. [512, 512])"


def check_settings(cfg: Config, world: World) -> None:
    accumulate, batch = cfg.train.accumulate, cfg.data.batch_size
    if accumulate < 1 or batch % (world.size * accumulate):
        raise SeglabError(
            f"data.batch_size={batch} must split evenly over {world.size} process(es) x "
            f"train.accumulate={accumulate} micro-batches"
        )
    if cfg.train.on_nonfinite not in ("stop", "skip"):
        raise SeglabError(f"train.on_nonfinite {cfg.train.on_nonfinite!r}: use stop or skip")
    border = cfg.loss.border_weights
    if border is not None and set(border) - {"w0", "sigma"}:
        raise SeglabError(f"loss.border_weights takes w0 and sigma, got {sorted(border)}")


def build_datasets(
    cfg: Config, check: bool = True, progress: bool = True
) -> tuple[FolderDataset, FolderDataset]:
    """Train and val datasets of cfg.data, each read once by the label check."""
    d = cfg.data
    set_max_image_pixels(d.max_image_pixels)  # the decompression-bomb limit (data/images.py)
    augment, plain = _transforms(d)
    layout = data_layout(d)  # data.image_dir, mask_suffix, val_fraction, ... (folder only)
    if d.weak:  # scribbles, points or boxes as the train split's labels
        from seglab.data.weak_training import weak_train_set

        train_set = weak_train_set(d, augment, layout)
    else:
        train_set = build_dataset(d.format, d.root, d.train_split, augment, d.cache, layout)
    val_set = build_dataset(d.format, d.root, d.val_split, plain, d.cache, layout)
    if check:
        check_dataset(train_set, progress=progress)
        check_dataset(val_set, progress=progress)
    return train_set, val_set


def _transforms(d):
    """(train, eval) transforms of data config `d`; instance data (data.format coco) is only
    flipped: Mask R-CNN resizes and normalises inside the model."""
    if getattr(dataset_class(d.format), "task", "semantic") == "instance":
        from seglab.data.coco import InstanceTransform

        return InstanceTransform(d.hflip), None
    augment = train_transform(d.crop_size, d.scale_range, d.hflip, augment=d.augment)
    return augment, eval_transform()


def image_channels(dataset: FolderDataset) -> int:
    """Channels of the dataset's images as the readers return them ((H, W, C) or (H, W))."""
    image, _ = dataset.load(0)
    return image.shape[2] if image.ndim == 3 else 1


def dataset_inputs(dataset) -> tuple[str, ...]:
    """The inputs a dataset's samples carry: ("image",) or ("image", "depth")."""
    return tuple(getattr(dataset, "inputs", ("image",)))


def class_weights(cfg: Config, train_set: FolderDataset) -> list[float] | None:
    weights = cfg.loss.class_weights
    if weights == "median_frequency":
        return dataset_median_frequency_weights(train_set, train_set.num_classes).tolist()
    if isinstance(weights, str):
        raise SeglabError(f"loss.class_weights {weights!r}: use median_frequency or a list")
    if weights is not None and len(weights) != train_set.num_classes:
        raise SeglabError(
            f"loss.class_weights has {len(weights)} values for {train_set.num_classes} classes"
        )
    return weights


def amp_dtype(cfg: Config, device: torch.device) -> torch.dtype:
    name = cfg.train.amp_dtype
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    if name not in ("bfloat16", "float16"):
        raise SeglabError(f"train.amp_dtype {name!r} is not one of: auto, bfloat16, float16")
    return getattr(torch, name)


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 convolutions natively (AMX or AVX-512 BF16); elsewhere oneDNN
    emulates them and bf16 autocast is slower than float32."""
    return torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()


def amp_enabled(cfg: Config, device: torch.device) -> bool:
    """`train.amp`, except that `amp_dtype: auto` on a CPU without native bf16 trains in float32
    (with a one-line notice): a recipe that asks for speed must not get slower on a laptop.
    An explicit `amp_dtype: bfloat16` is obeyed."""
    if not cfg.train.amp or device.type != "cpu" or cfg.train.amp_dtype != "auto":
        return cfg.train.amp
    if cpu_has_bf16():
        return True
    print(
        "seglab train: train.amp is off: this CPU has no native bf16 (AMX / AVX-512 BF16), where "
        "bf16 autocast is slower than float32; set train.amp_dtype: bfloat16 to force it",
        file=sys.stderr,
    )
    return False


def memory_format(cfg: Config) -> torch.memory_format:
    return torch.channels_last if cfg.train.channels_last else torch.contiguous_format


def build_model(
    cfg: Config, train_set: FolderDataset, world: World, device: torch.device, resume: bool
) -> SegmentationModel:
    """cfg's model for the dataset's classes and image channels, on `device`, SyncBN where
    asked, initialised from model.init_weights on a fresh start (a resume has its own)."""
    for fixed in FIXED_ARGUMENTS:  # before the call: Python would reject it with a TypeError
        if fixed in cfg.model.options:
            raise SeglabError(
                f"model.options.{fixed}: seglab takes it from the dataset (classes.txt and its "
                "images); remove it from the config"
            )
    channels = image_channels(train_set) + ("depth" in dataset_inputs(train_set))
    model_inputs = model_info(cfg.model.name).cls.inputs
    if set(model_inputs) - set(dataset_inputs(train_set)):
        raise SeglabError(
            f"model {cfg.model.name!r} takes {' + '.join(model_inputs)} but {cfg.data.root} "
            f"has {' + '.join(dataset_inputs(train_set))}; add its depth/ folder and depth.txt "
            "(seglab/data/depth.py) or choose an RGB model"
        )
    model_task = model_info(cfg.model.name).cls.task
    check_task(cfg.model.name, model_task, cfg.data.format, train_set)
    model = create_model(cfg.model.name, train_set.num_classes, channels, **cfg.model.options)
    if cfg.model.init_weights and not resume:  # name-and-shape matches; the rest stay fresh
        print(f"model.init_weights {load_matching_weights(model, cfg.model.init_weights).message}")
    if cfg.train.sync_bn and world.distributed:
        if device.type == "cpu":  # PyTorch's SyncBatchNorm runs on GPUs only
            warnings.warn(
                "train.sync_bn needs CUDA; on the CPU each process keeps its own BN", stacklevel=2
            )
        else:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same object
    model.to(device)
    model.to(memory_format=memory_format(cfg))
    return model


def build_loss(
    cfg: Config, model: SegmentationModel, weights: list[float] | None, device: torch.device
) -> SegmentationLoss:
    """CE on the main output plus the model's auxiliary outputs, weighted by the model's
    `aux_weights` unless loss.aux_weights gives one weight per auxiliary output."""
    aux_weights = model.aux_weights
    if cfg.loss.aux_weights is not None:
        if len(cfg.loss.aux_weights) != len(aux_weights):
            raise SeglabError(
                f"loss.aux_weights has {len(cfg.loss.aux_weights)} values but "
                f"{cfg.model.name} has {len(aux_weights)} auxiliary outputs; give "
                f"{len(aux_weights)} weights or remove loss.aux_weights"
            )
        aux_weights = tuple(cfg.loss.aux_weights)
    # With U-Net's border weights the class weights become its w_c term inside w(x).
    border = cfg.loss.border_weights is not None
    ohem = cfg.loss.ohem
    if ohem is not None and (border or set(ohem) - {"thresh", "min_kept"}):
        raise SeglabError(
            f"loss.ohem {ohem}: give only thresh and min_kept, e.g. {{thresh: 0.7, min_kept: "
            "100000}, and not together with loss.border_weights"
        )
    return SegmentationLoss(
        None if border else weights,
        aux_weights,
        ohem=ohem,
        se_weight=getattr(model, "se_weight", None),
        terms=cfg.loss.terms,
        gated_crf=cfg.loss.gated_crf,
        relax=cfg.loss.relax,
    ).to(device)


def collate_same_size(samples: list[tuple[torch.Tensor, torch.Tensor]]):
    """default_collate, with a one-line error when the images cannot be stacked."""
    sizes = sorted({tuple(image.shape[-2:]) for image, _ in samples})
    if len(sizes) > 1:
        raise SeglabError(SIZES_DIFFER.format(" and ".join(f"{w}x{h}" for h, w in sizes[:2])))
    return default_collate(samples)


def build_loader(
    cfg: Config, train_set: FolderDataset, world: World, device: torch.device, step: int
) -> DataLoader:
    """Micro-batches of this rank's slice of every global batch, from `step` on."""
    batch = cfg.data.batch_size
    instance = dataset_task(train_set) == "instance"  # lists of targets, not one tensor
    return DataLoader(
        train_set,
        batch_size=batch // (world.size * cfg.train.accumulate),
        sampler=TrainSampler(len(train_set), batch, cfg.train.seed, step, world.rank, world.size),
        num_workers=cfg.data.num_workers,
        pin_memory=device.type == "cuda",
        collate_fn=collate_instances if instance else collate_same_size,
        generator=torch.Generator(),  # keeps DataLoader off the global RNG (exact resume)
    )


def next_batch(batches) -> tuple[torch.Tensor, torch.Tensor]:
    """The next micro-batch; a SeglabError raised in a loader worker stays one line."""
    try:
        return next(batches)
    except SeglabError as error:  # a worker's error comes back with its traceback inside
        raise SeglabError(str(error).strip().splitlines()[-1].split("SeglabError: ")[-1]) from None
