"""The `seglab` command: the only module that wires data, models, engine and reports together.

A SeglabError (a user's mistake) prints one line and exits with status 2; nothing is left
half-written because every file is written atomically.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from seglab.errors import SeglabError

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEMO_CONFIG = REPO_CONFIGS / "demo_shapes.yaml"


# ---------------------------------------------------------------------------- data
def cmd_data_shapes(args: argparse.Namespace) -> None:
    from seglab.data.shapes import write_shapes_dataset

    root = write_shapes_dataset(args.out, args.train, args.val, args.size, args.seed)
    print(f"wrote {args.train} train + {args.val} val images of {args.size}x{args.size} to {root}")


def cmd_data_check(args: argparse.Namespace) -> None:
    from seglab.data import build_dataset
    from seglab.data.folder import check_dataset
    from seglab.data.summary import dataset_splits, dataset_summary

    for split in args.split or dataset_splits(args.format, args.root):
        dataset = build_dataset(args.format, args.root, split)
        check_dataset(dataset, progress=not args.quiet)
        print(dataset_summary(dataset) + "; all readable, sizes match, labels in range")


def cmd_data_stats(args: argparse.Namespace) -> None:
    from seglab.data import build_dataset
    from seglab.data.summary import dataset_summary
    from seglab.losses import class_pixel_counts, median_frequency_weights

    dataset = build_dataset(args.format, args.root, args.split)
    print(dataset_summary(dataset))
    masks = (dataset.load(i)[1] for i in range(len(dataset)))
    pixels, image_pixels = class_pixel_counts(masks, dataset.num_classes)
    weights = median_frequency_weights(pixels, image_pixels)
    total = max(pixels.sum(), 1)
    print(f"{'id':>3}  {'class':<16} {'pixels':>12} {'share %':>8} {'median-freq weight':>19}")
    for i, name in enumerate(dataset.classes.names):
        print(
            f"{i:>3}  {name:<16} {pixels[i]:>12} {100 * pixels[i] / total:>8.2f} "
            f"{weights[i]:>19.4f}"
        )


def cmd_data_convert(args: argparse.Namespace) -> None:
    from seglab.data.voc import write_sbd_train_aug

    count = write_sbd_train_aug(args.sbd_root, args.voc_root, progress=not args.quiet)
    print(f"wrote train_aug ({count} images) into {args.voc_root}")


# ---------------------------------------------------------------------------- models
def cmd_models(args: argparse.Namespace) -> None:
    import inspect

    import torch

    from seglab.benchmark import model_gflops
    from seglab.models import MODELS, count_parameters, create_model

    width = max(len(name) for name in MODELS) + 1
    for name in sorted(MODELS):
        info = MODELS[name]
        line = f"{name:<{width}} {info.summary}"
        if args.table:
            paper = info.paper_options or {"num_classes": 21}
            with torch.device("meta"):  # shapes only: no memory for 100M+ parameters
                params = count_parameters(create_model(name, **paper))
            gflops = model_gflops(name, (512, 512), **paper)  # FlopCounterMode: 2 per MAC
            line = (
                f"{name:<{width}} {params:>13,d} params {gflops:>7.1f} GFLOPs@512x512  "
                f"{info.summary} ({paper})"
            )
        print(line)
        if args.verbose:
            options = [
                f"{p.name}={p.default!r}"
                for p in inspect.signature(info.builder).parameters.values()
                if p.name not in ("num_classes", "in_channels")
            ]
            print(f"{'':<{width}} options: {', '.join(options)}")


# ---------------------------------------------------------------------------- train
def cmd_train(args: argparse.Namespace) -> None:
    from seglab.config import load_config
    from seglab.engine.trainer import train

    cfg = load_config(args.config, args.overrides)
    run_dir = train(cfg, resume=args.resume, progress=not args.quiet)
    print(f"run written to {run_dir} (best.safetensors, final.safetensors, metrics.jsonl)")


# ---------------------------------------------------------------------------- eval
def _inference_config(args: argparse.Namespace, base=None):
    from seglab.config import InferenceConfig

    cfg = base or InferenceConfig()
    if args.mode:
        cfg.mode = args.mode
    if args.crop:
        cfg.crop_size = [int(v) for v in args.crop.lower().split("x")]
    if args.scales:
        cfg.scales = [float(v) for v in args.scales.split(",")]
    if args.flip:
        cfg.flip = True
    return cfg


def _resolve_checkpoint(path: str) -> tuple[Path, Path | None]:
    """A weights file, or a run directory (its best weights and its config)."""
    target = Path(path)
    if target.is_dir():
        weights = target / "best.safetensors"
        if not weights.is_file():
            raise SeglabError(f"{target} has no best.safetensors; is it a finished seglab run?")
        config = target / "config.yaml"
        return weights, config if config.is_file() else None
    if not target.is_file():
        raise SeglabError(f"{target}: no such checkpoint file or run directory")
    return target, None


def evaluate_checkpoint(
    checkpoint: str,
    data_root: str | None,
    split: str | None,
    out: str | None,
    inference=None,
    crf: str | None = None,
    num_overlays: int = 6,
    progress: bool = True,
    data_format: str | None = None,
) -> tuple[dict, Path]:
    """Evaluate weights on a dataset split and write the report. Returns (metrics, report)."""
    import torch

    from seglab.config import load_config
    from seglab.data import build_dataset
    from seglab.data.folder import check_dataset
    from seglab.data.transforms import eval_transform
    from seglab.device import resolve_device
    from seglab.engine.evaluate import evaluate
    from seglab.engine.report import write_report
    from seglab.metrics import ConfusionMatrix
    from seglab.weights import load_weights

    weights, config_path = _resolve_checkpoint(checkpoint)
    cfg = load_config(config_path) if config_path else None
    if data_root is None:
        if cfg is None:
            raise SeglabError("give --data ROOT (the weights file does not name its dataset)")
        data_root = cfg.data.root
    split = split or (cfg.data.val_split if cfg else "val")
    inference = inference or (cfg.inference if cfg else None)
    data_format = data_format or (cfg.data.format if cfg else "folder")
    dataset = build_dataset(data_format, data_root, split, eval_transform())
    check_dataset(dataset, progress)
    model, meta = load_weights(weights)
    if meta["num_classes"] != dataset.num_classes:
        raise SeglabError(
            f"{weights}: model has {meta['num_classes']} classes but {data_root} has "
            f"{dataset.num_classes}; evaluate it on the dataset it was trained for"
        )
    device = resolve_device("auto")
    model.to(device)
    overlays = []
    crf_confusion = ConfusionMatrix(dataset.num_classes, device) if crf else None

    def on_batch(indices, images, masks, probs):
        predictions = probs.argmax(1)
        if crf_confusion is not None:
            from seglab.crf import dense_crf

            raw = torch.stack(
                [torch.from_numpy(dataset.load(i)[0]).permute(2, 0, 1) for i in indices]
            ).to(device)
            crf_confusion.update(dense_crf(probs, raw, preset=crf).argmax(1), masks)
        for i, index in enumerate(indices):
            if len(overlays) < num_overlays:
                image = dataset.load(index)[0]
                overlays.append(
                    (
                        dataset.names[index],
                        image,
                        masks[i].cpu().numpy(),
                        predictions[i].cpu().numpy().astype(np.uint8),
                    )
                )

    confusion = evaluate(model, dataset, device, inference, progress, on_batch=on_batch)
    metrics = confusion.compute()
    from seglab.config import InferenceConfig

    inf = inference or InferenceConfig()
    protocol = {
        "checkpoint": str(weights),
        "model": f"{meta['name']} {meta.get('options', {})}",
        "dataset": f"{data_root} split {split} ({len(dataset)} images)",
        "mode": inf.mode + (f" crop {inf.crop_size}" if inf.crop_size else ""),
        "scales": inf.scales,
        "flip": inf.flip,
        "crf": crf or "none",
    }
    if crf_confusion is not None:
        metrics["crf"] = {"preset": crf, **crf_confusion.compute()}
    out_dir = Path(out) if out else weights.parent / "report"
    report = write_report(
        out_dir, metrics, confusion.matrix.cpu().numpy(), dataset.classes, protocol, overlays
    )
    return metrics, report


def cmd_eval(args: argparse.Namespace) -> None:
    metrics, report = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        args.split,
        args.out,
        _inference_config(args) if (args.mode or args.crop or args.scales or args.flip) else None,
        args.crf,
        progress=not args.quiet,
        data_format=args.format,
    )
    print(
        f"mIoU {100 * metrics['mean_iou']:.2f}  pixel acc {100 * metrics['pixel_accuracy']:.2f}"
        f"  mean acc {100 * metrics['mean_accuracy']:.2f}  FWIoU {100 * metrics['fw_iou']:.2f}"
        f"  Dice {100 * metrics['mean_dice']:.2f}"
    )
    if "crf" in metrics:
        print(f"with CRF ({args.crf}): mIoU {100 * metrics['crf']['mean_iou']:.2f}")
    print(f"report: {report}")


def cmd_crf_search(args: argparse.Namespace) -> None:
    """DeepLab's CRF cross-validation: grid-search w1, theta_alpha, theta_beta on val images."""
    import torch
    from tqdm import tqdm

    from seglab.config import load_config
    from seglab.crf.search import grid_search
    from seglab.data import build_dataset
    from seglab.data.transforms import eval_transform
    from seglab.inference import predict_probabilities
    from seglab.metrics import ConfusionMatrix
    from seglab.weights import load_weights

    weights, config_path = _resolve_checkpoint(args.checkpoint)
    cfg = load_config(config_path) if config_path else None
    if args.data is None and cfg is None:
        raise SeglabError("give --data ROOT (the weights file does not name its dataset)")
    data_format = args.format or (cfg.data.format if cfg else "folder")
    dataset = build_dataset(
        data_format,
        args.data or cfg.data.root,
        args.split or (cfg.data.val_split if cfg else "val"),
        eval_transform(),
    )
    model, meta = load_weights(weights)
    model.eval()
    probs, images, labels = [], [], []
    for index in tqdm(
        range(min(args.images, len(dataset))), desc="network predictions", disable=args.quiet
    ):
        image, mask = dataset[index]
        probs.append(predict_probabilities(model, image[None])[0])
        images.append(torch.from_numpy(dataset.load(index)[0]).permute(2, 0, 1))
        labels.append(mask)
    grid = [[float(v) for v in text.split(",")] for text in (args.w1, args.alpha, args.beta)]
    results = grid_search(probs, images, labels, meta["num_classes"], *grid, args.preset)
    baseline = ConfusionMatrix(meta["num_classes"])
    for prob, mask in zip(probs, labels, strict=True):
        baseline.update(prob.argmax(0)[None], mask[None])
    print(f"network alone: mIoU {100 * baseline.compute()['mean_iou']:.2f}")
    print(f"{'w1':>6} {'theta_alpha':>12} {'theta_beta':>11} {'mIoU':>7}")
    for params, miou in results[: args.top]:
        print(
            f"{params.w1:>6g} {params.theta_alpha:>12g} {params.theta_beta:>11g} {100 * miou:>7.2f}"
        )
    best = results[0][0]
    print(
        f"best on {len(probs)} images: --crf {args.preset} with w1={best.w1:g} "
        f"theta_alpha={best.theta_alpha:g} theta_beta={best.theta_beta:g}"
    )


def cmd_convert(args: argparse.Namespace) -> None:
    """A torchvision segmentation checkpoint -> seglab weights (safetensors + YAML)."""
    from seglab.models.torchvision_convert import load_torchvision_checkpoint
    from seglab.weights import save_weights

    model = load_torchvision_checkpoint(args.checkpoint)
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise SeglabError(f"--out {out}: seglab weights are written as NAME.safetensors")
    save_weights(model, out)
    spec = model.seglab_spec
    print(
        f"wrote {out} (+ {out.with_suffix('.yaml').name}): {spec['name']} "
        f"{spec['options']} with {spec['num_classes']} classes"
    )


# ---------------------------------------------------------------------------- predict
def _collect_images(inputs: list[str]) -> list[Path]:
    from seglab.data.folder import IMAGE_SUFFIXES

    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            paths.append(path)
        else:
            raise SeglabError(f"{path}: no such image file or folder")
    if not paths:
        raise SeglabError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {', '.join(inputs)}")
    return paths


def predict_files(
    checkpoint: str,
    inputs: list[str],
    out: str,
    inference=None,
    crf: str | None = None,
    progress: bool = True,
    labelids: bool = False,
) -> list[Path]:
    """Write OUT/labels/NAME.png (palette label ids) and OUT/overlays/NAME.png per image.

    labelids: write Cityscapes labelIds (grayscale, for the benchmark server) instead.
    """
    from PIL import Image
    from tqdm import tqdm

    from seglab.atomic import write_atomically, write_png_atomically
    from seglab.data.folder import read_image, write_mask
    from seglab.data.labels import default_palette
    from seglab.engine.report import overlay
    from seglab.inference import Segmenter

    weights, _ = _resolve_checkpoint(checkpoint)
    segmenter = Segmenter.from_checkpoint(weights, "auto", inference, crf=crf)
    colors = (
        segmenter.classes.colors if segmenter.classes else default_palette(segmenter.num_classes)
    )
    out_dir = Path(out)
    (out_dir / "labels").mkdir(parents=True, exist_ok=True)
    (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    written = []
    for path in tqdm(_collect_images(inputs), desc="predicting", unit="img", disable=not progress):
        image = read_image(path)
        labels = segmenter.predict(image)
        target = out_dir / "labels" / f"{path.stem}.png"
        if labelids:
            from seglab.data.cityscapes import train_ids_to_label_ids

            ids = Image.fromarray(train_ids_to_label_ids(labels), mode="L")
            write_png_atomically(ids, target)
        else:
            write_atomically(target, lambda tmp, labels=labels: write_mask(labels, tmp, colors))
        write_png_atomically(
            Image.fromarray(overlay(image, labels, colors)),
            out_dir / "overlays" / f"{path.stem}.png",
        )
        written.append(target)
    return written


def cmd_predict(args: argparse.Namespace) -> None:
    inference = (
        _inference_config(args) if (args.mode or args.crop or args.scales or args.flip) else None
    )
    written = predict_files(
        args.checkpoint,
        args.inputs,
        args.out,
        inference,
        args.crf,
        progress=not args.quiet,
        labelids=args.labelids,
    )
    print(
        f"wrote {len(written)} label maps to {Path(args.out) / 'labels'} and overlays to "
        f"{Path(args.out) / 'overlays'}"
    )


# ---------------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> None:
    from seglab.config import load_config
    from seglab.data.shapes import write_shapes_dataset
    from seglab.engine.trainer import train

    start = time.perf_counter()
    if not DEMO_CONFIG.is_file():
        raise SeglabError(f"{DEMO_CONFIG} is missing; run the demo from a seglab checkout")
    overrides = [f"data.root={args.data}", f"run_dir={args.out}"] + args.overrides
    cfg = load_config(DEMO_CONFIG, overrides)
    data = Path(cfg.data.root)
    if not (data / "classes.txt").is_file():
        print(f"generating the shapes dataset in {data} ...")
        write_shapes_dataset(data, args.train_images, args.val_images, args.size)
    run_dir = Path(cfg.run_dir)
    if run_dir.exists():  # the demo always starts fresh; only a previous demo run is replaced
        if not (run_dir / "config.yaml").is_file():
            raise SeglabError(f"{run_dir} exists and is not a seglab run; pass --out elsewhere")
        shutil.rmtree(run_dir)
    print(f"training {cfg.model.name} {cfg.model.options} for {cfg.train.iters} iterations ...")
    train(cfg, progress=not args.quiet)
    trained = time.perf_counter()
    metrics, report = evaluate_checkpoint(str(run_dir), None, None, None, progress=not args.quiet)
    val_images = [
        str(data / "images" / f"{name.strip()}.png")
        for name in (data / "val.txt").read_text().split()[:16]
    ]
    predict_files(
        str(run_dir / "best.safetensors"),
        val_images,
        str(run_dir / "predictions"),
        progress=not args.quiet,
    )
    total = time.perf_counter() - start
    print(
        f"\nvalidation mIoU {100 * metrics['mean_iou']:.2f} "
        f"(pixel accuracy {100 * metrics['pixel_accuracy']:.2f}); "
        f"trained in {trained - start:.0f} s, {total:.0f} s in all"
    )
    print(f"report:      {report}")
    print(f"weights:     {run_dir / 'best.safetensors'}")
    print(f"predictions: {run_dir / 'predictions'}")


# ---------------------------------------------------------------------------- parser
def _add_inference_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mode",
        choices=["whole", "slide", "overlap_tile"],
        help="inference mode (default: the run's config, else whole)",
    )
    parser.add_argument("--crop", help="window (slide) or tile (overlap_tile) size, e.g. 512x512")
    parser.add_argument("--scales", help="comma-separated test scales, e.g. 0.5,0.75,1,1.25,1.5")
    parser.add_argument("--flip", action="store_true", help="also average horizontal flips")
    parser.add_argument(
        "--crf",
        metavar="PRESET",
        help="dense CRF post-processing: deeplab-largefov, deeplab-v2, pydensecrf",
    )


def build_parser() -> argparse.ArgumentParser:
    from seglab.benchmark import add_benchmark_command
    from seglab.export import add_export_command

    parser = argparse.ArgumentParser(
        prog="seglab", description="Classic semantic segmentation: train, evaluate, predict."
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="generate shapes data, train, evaluate, predict")
    demo.add_argument("--data", default="data/shapes", help="dataset folder (generated if absent)")
    demo.add_argument("--out", default="runs/demo", help="run directory (replaced if a demo run)")
    demo.add_argument("--train-images", type=int, default=2000)
    demo.add_argument("--val-images", type=int, default=200)
    demo.add_argument("--size", type=int, default=64, help="image side in pixels")
    demo.add_argument("overrides", nargs="*", help="config overrides, e.g. train.iters=100")
    demo.set_defaults(func=cmd_demo)

    train = commands.add_parser("train", help="train a model from a YAML config")
    train.add_argument("config", help="YAML config, e.g. configs/unet_shapes.yaml")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=0.01")
    train.add_argument("--resume", action="store_true", help="continue RUN_DIR/last.pt")
    train.set_defaults(func=cmd_train)

    ev = commands.add_parser("eval", help="evaluate weights or a run directory; write a report")
    ev.add_argument("checkpoint", help="NAME.safetensors (with NAME.yaml) or a run directory")
    ev.add_argument("--data", help="dataset root (default: the run's)")
    ev.add_argument("--format", help="dataset layout, e.g. folder, voc (default: the run's)")
    ev.add_argument("--split", help="split to evaluate (default: the run's val split)")
    ev.add_argument("--out", help="report folder (default: next to the weights, report/)")
    _add_inference_options(ev)
    ev.set_defaults(func=cmd_eval)

    pr = commands.add_parser("predict", help="label images or folders of images")
    pr.add_argument("checkpoint", help="NAME.safetensors (with NAME.yaml) or a run directory")
    pr.add_argument("inputs", nargs="+", help="image files or folders")
    pr.add_argument("--out", required=True, help="output folder (labels/ and overlays/)")
    pr.add_argument(
        "--labelids",
        action="store_true",
        help="write Cityscapes labelIds (for submission) instead of train ids",
    )
    _add_inference_options(pr)
    pr.set_defaults(func=cmd_predict)

    convert = commands.add_parser(
        "convert", help="turn a torchvision segmentation checkpoint into seglab weights"
    )
    convert.add_argument(
        "checkpoint",
        help="state dict of torchvision fcn_resnet50/101, "
        "deeplabv3_resnet50/101 or deeplabv3_mobilenet_v3_large (.pth)",
    )
    convert.add_argument("--out", required=True, help="NAME.safetensors to write")
    convert.set_defaults(func=cmd_convert)

    search = commands.add_parser(
        "crf-search", help="grid-search the dense CRF's appearance kernel on validation images"
    )
    search.add_argument("checkpoint", help="NAME.safetensors (with NAME.yaml) or a run directory")
    search.add_argument("--data", help="dataset root (default: the run's)")
    search.add_argument("--format", help="dataset layout (default: the run's, else folder)")
    search.add_argument("--split", help="split (default: the run's val split)")
    search.add_argument("--images", type=int, default=100, help="images to search on (100)")
    search.add_argument(
        "--preset",
        default="deeplab-largefov",
        help="where w2, theta_gamma and iterations come from",
    )
    search.add_argument("--w1", default="3,4,5", help="comma-separated w1 values")
    search.add_argument("--alpha", default="30,50,80,121", help="theta_alpha values")
    search.add_argument("--beta", default="3,5,10", help="theta_beta values")
    search.add_argument("--top", type=int, default=10, help="rows to print")
    search.set_defaults(func=cmd_crf_search)

    models = commands.add_parser("models", help="list the registered models")
    models.add_argument("--table", action="store_true", help="with parameter counts")
    models.add_argument("--verbose", "-v", action="store_true", help="with each model's options")
    models.set_defaults(func=cmd_models)

    formats_help = "dataset layout: folder, voc, cityscapes, camvid, ade20k (default folder)"
    data = commands.add_parser("data", help="dataset tools").add_subparsers(
        dest="data_command", required=True, metavar="TOOL"
    )
    shapes = data.add_parser("shapes", help="write the synthetic shapes dataset")
    shapes.add_argument("out")
    shapes.add_argument("--train", type=int, default=2000, help="training images")
    shapes.add_argument("--val", type=int, default=200, help="validation images")
    shapes.add_argument("--size", type=int, default=64, help="image side in pixels")
    shapes.add_argument("--seed", type=int, default=0)
    shapes.set_defaults(func=cmd_data_shapes)
    check = data.add_parser("check", help="validate every image and mask of a dataset")
    check.add_argument("root")
    check.add_argument("--format", default="folder", help=formats_help)
    check.add_argument("--split", action="append", help="split(s) to check (default: all)")
    check.set_defaults(func=cmd_data_check)
    stats = data.add_parser("stats", help="per-class pixel frequencies and SegNet weights")
    stats.add_argument("root")
    stats.add_argument("--format", default="folder", help=formats_help)
    stats.add_argument("--split", default="train")
    stats.set_defaults(func=cmd_data_stats)
    convert = data.add_parser("convert", help="convert a dataset release once (sbd)")
    convert.add_argument("source", choices=["sbd"], help="sbd: SBD .mat -> VOC train_aug")
    convert.add_argument("sbd_root", help="SBD's benchmark_RELEASE/dataset folder")
    convert.add_argument("voc_root", help="the VOC folder (VOCdevkit or VOC2012)")
    convert.set_defaults(func=cmd_data_convert)
    add_export_command(commands)
    add_benchmark_command(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except SeglabError as error:
        print(f"seglab: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("seglab: interrupted; a training run continues with --resume", file=sys.stderr)
        return 130
    return 0
