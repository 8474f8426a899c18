"""`seglab weak CONFIG`: image tags -> CAMs -> pseudo masks -> a segmentation model.

CONFIG is a seglab training config (model, data, optim, train: the segmentation stage, often
`base: unet_shapes.yaml`) with a `weak:` section:

    weak:
      cam:    {method: mdc | ficklenet, options: {...}, iters, batch_size, lr, weight_decay,
               hflip, seed, warmup_iters, amp (bf16 autocast + channels_last on the CPU)}
      pseudo: {fg_threshold: 0.3, bg_threshold: 0.2, train_on: masks | seeds,
               crf: null | a seglab.crf preset (deeplab-largefov ...) refining the masks}

data.root is the folder layout with tags/ (seglab/data/weak_labels.py). Stages, each writing
into RUN = run_dir (a finished stage is not run again, so a stopped run continues):
  (a) RUN/cam/: the CAM generator's weights (cam.safetensors), its loss log (log.jsonl) and
      its tags on the val images against the true ones (val_tags.json: per-class F1, exact
      match; seglab.weak.pseudo.score_tags);
  (b) RUN/pseudo_masks/: seeds/ and masks/ of every training image and metrics.json (the
      pseudo masks' mIoU on train against the true masks);
  (c) RUN/pseudo_data/ (the folder layout: images linked, train masks = pseudo masks or seeds,
      val masks = the true ones) and RUN/segmentation/: seglab.train's run on it;
  (d) RUN/final_eval/: the segmentation model's report on the true val masks;
      RUN/summary.json gathers the numbers.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import torch
import yaml

from seglab.config import Config, load_config, parse_override
from seglab.data.folder import FolderDataset
from seglab.errors import SeglabError

WEAK_DEFAULTS = {
    "cam": {"method": "mdc", "options": {}, "iters": 300, "batch_size": 16, "lr": 1e-3,
            "weight_decay": 1e-4, "hflip": True, "seed": 0, "warmup_iters": 0, "amp": False},
    "pseudo": {"fg_threshold": 0.3, "bg_threshold": 0.2, "train_on": "masks", "crf": None},
}  # fmt: skip


def _update(target: dict, values: dict) -> None:
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _update(target[key], value)
        else:
            target[key] = value


def load_weak_config(path: str | Path, overrides: list[str] | None = None) -> tuple[Config, dict]:
    """(the training config, its weak section over WEAK_DEFAULTS). `weak.` overrides
    (weak.cam.iters=100) change single keys of the section; the others go to load_config."""
    overrides = list(overrides or [])
    cfg = load_config(path, [o for o in overrides if not o.startswith("weak.")])
    if cfg.weak is None:
        raise SeglabError(f"{path}: no weak section; see configs/weak_mdc_shapes.yaml")
    if cfg.data.format != "folder":
        raise SeglabError(f"{path}: data.format must be folder (images/, masks/, tags/)")
    weak = copy.deepcopy(WEAK_DEFAULTS)
    given = copy.deepcopy(cfg.weak)
    for text in overrides:
        if text.startswith("weak."):
            _update(given, parse_override(text)["weak"])
    for section, values in given.items():
        if section not in weak or not isinstance(values, dict):
            raise SeglabError(f"{path}: weak.{section}: use the sections cam and pseudo")
        unknown = set(values) - set(weak[section])
        if unknown:
            raise SeglabError(f"{path}: unknown key weak.{section}.{sorted(unknown)[0]}; "
                              f"valid: {', '.join(weak[section])}")  # fmt: skip
        weak[section].update(values)
    if weak["pseudo"]["train_on"] not in ("masks", "seeds"):
        raise SeglabError(f"{path}: weak.pseudo.train_on must be masks or seeds")
    from seglab.crf.params import PRESETS

    if weak["pseudo"]["crf"] is not None and weak["pseudo"]["crf"] not in PRESETS:
        raise SeglabError(f"{path}: weak.pseudo.crf must be null or one of {', '.join(PRESETS)}")
    return cfg, weak


def _link(target: Path, link: Path) -> None:
    if link.exists() or link.is_symlink():
        link.unlink()
    try:
        os.symlink(target.absolute(), link)
    except OSError:  # file systems without symlinks
        shutil.copyfile(target, link)


def write_pseudo_layout(train: FolderDataset, val: FolderDataset, pseudo: Path, out: Path) -> None:
    """out/ in the folder layout: classes.txt, images/ linked, masks/ = `pseudo`'s masks for
    train and the true masks for val, train.txt and val.txt."""
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(train.root / "classes.txt", out / "classes.txt")
    for split, dataset in (("train", train), ("val", val)):
        for index, name in enumerate(dataset.names):
            image = dataset.image_path(index)
            _link(image, out / "images" / f"{name}{image.suffix}")
            mask = pseudo / f"{name}.png" if split == "train" else dataset.mask_path(index)
            _link(mask, out / "masks" / f"{name}.png")
        (out / f"{split}.txt").write_text("".join(f"{n}\n" for n in dataset.names))


def run_weak(cfg: Config, weak: dict, progress: bool = True) -> dict:
    """Run the four stages (module docstring); returns the summary."""
    from safetensors.torch import load_file, save_file

    import seglab
    from seglab.data.weak_labels import weak_label_path
    from seglab.engine.evaluate_run import evaluate_checkpoint
    from seglab.weak import pseudo as stages

    run, data, cam, pseudo = Path(cfg.run_dir), cfg.data, weak["cam"], weak["pseudo"]
    say = print if progress else (lambda *a: None)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    train_set = FolderDataset(data.root, data.train_split)
    val_set = FolderDataset(data.root, data.val_split)
    tags = stages.TagDataset(train_set, hflip=cam["hflip"])
    run.mkdir(parents=True, exist_ok=True)  # after the tags were read: a mistake leaves no run
    (run / "weak.yaml").write_text(yaml.safe_dump(weak, sort_keys=False))
    # (a) the CAM generator on image tags
    torch.manual_seed(cam["seed"])
    model = stages.build_cam_model(cam["method"], tags.num_foreground, dict(cam["options"]))
    weights = run / "cam" / "cam.safetensors"
    if weights.is_file():
        model.load_state_dict(load_file(str(weights)))
        say(f"(a) CAM generator: {weights} (already trained)")
    else:
        weights.parent.mkdir(parents=True, exist_ok=True)
        with open(run / "cam" / "log.jsonl", "w") as log_file:

            def log(step, loss):
                log_file.write(json.dumps({"step": step, "loss": loss}) + "\n")
                say(f"(a) {cam['method']} step {step}/{cam['iters']} tag loss {loss:.4f}")

            stages.train_cam(model, tags, cam["iters"], cam["batch_size"], cam["lr"],
                      cam["weight_decay"], cam["seed"], log, cam["warmup_iters"],
                      cam["amp"])  # fmt: skip
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))

    # (a') its tags on the val images, which it never saw (none where val has no tags/)
    tag_scores = {"f1": None, "mean_f1": None, "exact_match": None}
    if all(weak_label_path(data.root, "tags", name).is_file() for name in val_set.names):
        tag_scores = stages.score_tags(model, stages.TagDataset(val_set, hflip=False))
        (run / "cam" / "val_tags.json").write_text(json.dumps(tag_scores, indent=2))
        say(f"(a) val tags: per-class F1 {[round(f, 3) for f in tag_scores['f1']]}, exact "
            f"match {tag_scores['exact_match']:.3f}")  # fmt: skip

    # (b) seeds and pseudo masks, scored against the true training masks
    masks_dir = run / "pseudo_masks"
    if (masks_dir / "metrics.json").is_file():
        pseudo_metrics = json.loads((masks_dir / "metrics.json").read_text())
    else:
        pseudo_metrics = stages.write_pseudo_masks(model, tags, masks_dir, pseudo["fg_threshold"],
                                                   pseudo["bg_threshold"],
                                                   pseudo["crf"])  # fmt: skip
    say(f"(b) pseudo masks: train mIoU {pseudo_metrics['pseudo_mask_mean_iou']:.4f} "
        f"({masks_dir})")  # fmt: skip

    # (c) a segmentation model trained on them by seglab's trainer
    layout = run / "pseudo_data"
    write_pseudo_layout(train_set, val_set, masks_dir / pseudo["train_on"], layout)
    cfg = copy.deepcopy(cfg)
    cfg.weak, cfg.data.root = None, str(layout)
    cfg.data.train_split, cfg.data.val_split = "train", "val"
    cfg.data.image_dir, cfg.data.mask_dir, cfg.data.image_suffix = "images", "masks", None
    cfg.data.mask_suffix, cfg.data.val_fraction = ".png", None
    cfg.run_dir = str(run / "segmentation")
    if not (run / "segmentation" / "final.safetensors").is_file():
        seglab.train(cfg, resume=(run / "segmentation" / "last.pt").is_file(), progress=progress)

    # (d) final mIoU on the true val masks
    scores, report = evaluate_checkpoint(run / "segmentation", data_root=data.root,
                                         split=data.val_split, out=run / "final_eval",
                                         progress=progress, data_format="folder")  # fmt: skip
    summary = {
        "method": cam["method"],
        "val_tag_f1": tag_scores["f1"],
        "val_tag_mean_f1": tag_scores["mean_f1"],
        "val_tag_exact_match": tag_scores["exact_match"],
        "pseudo_mask_mean_iou_train": pseudo_metrics["pseudo_mask_mean_iou"],
        "seed_pixel_accuracy_train": pseudo_metrics["seed_pixel_accuracy"],
        "seed_coverage_train": pseudo_metrics["seed_coverage"],
        "val_mean_iou": scores["mean_iou"],
        "report": str(report),
    }
    (run / "summary.json").write_text(json.dumps(summary, indent=2))
    say(f"(d) val mIoU {scores['mean_iou']:.4f}; summary {run / 'summary.json'}")
    return summary
