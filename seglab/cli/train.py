"""`seglab train` and `seglab demo`."""

from __future__ import annotations

import argparse
from pathlib import Path

from seglab.errors import SeglabError

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo_shapes.yaml"


def run_train(args: argparse.Namespace) -> None:
    from seglab.config import load_config
    from seglab.engine.trainer import train

    # --from: a head start (seglab/head_start.py); a path from the shell is the shell's
    start = [f"model.init_weights={Path(args.start).absolute()}"] if args.start else []
    cfg = load_config(args.config, args.overrides + start)
    run_dir = train(cfg, resume=args.resume, progress=not args.quiet)
    print(f"run written to {run_dir} (best.safetensors, final.safetensors, metrics.jsonl)")


def run_demo(args: argparse.Namespace) -> None:
    import shutil
    import time

    from seglab.config import load_config
    from seglab.data.shapes import write_shapes_dataset
    from seglab.engine.evaluate_run import evaluate_checkpoint
    from seglab.engine.trainer import train
    from seglab.predict import predict_files

    start = time.perf_counter()
    if not DEMO_CONFIG.is_file():
        raise SeglabError(f"{DEMO_CONFIG} is missing; run the demo from a seglab checkout")
    overrides = [f"data.root={args.data}", f"run_dir={args.out}"] + args.overrides
    cfg = load_config(DEMO_CONFIG, overrides)
    data = Path(cfg.data.root)
    progress = not args.quiet
    if not (data / "classes.txt").is_file():
        print(f"generating the shapes dataset in {data} ...")
        write_shapes_dataset(data, args.train_images, args.val_images, args.size, progress=progress)
    generated = time.perf_counter()
    run_dir = Path(cfg.run_dir)
    if run_dir.exists():  # the demo always starts fresh; only a previous demo run is replaced
        if not (run_dir / "config.yaml").is_file():
            raise SeglabError(f"{run_dir} exists and is not a seglab run; pass --out elsewhere")
        shutil.rmtree(run_dir)
    print(f"training {cfg.model.name} {cfg.model.options} for {cfg.train.iters} iterations ...")
    train(cfg, progress=progress)
    trained = time.perf_counter()
    metrics, report = evaluate_checkpoint(run_dir, progress=progress)
    evaluated = time.perf_counter()
    val_images = [
        data / "images" / f"{name.strip()}.png"
        for name in (data / "val.txt").read_text().split()[:16]
    ]
    predict_files(run_dir, val_images, run_dir / "predictions", progress=progress)
    done = time.perf_counter()
    print(
        f"\nvalidation mIoU {100 * metrics['mean_iou']:.2f} "
        f"(pixel accuracy {100 * metrics['pixel_accuracy']:.2f}); {done - start:.0f} s in all: "
        f"data {generated - start:.0f} s, training {trained - generated:.0f} s, "
        f"evaluation and report {evaluated - trained:.0f} s, predictions {done - evaluated:.0f} s"
    )
    print(f"report:      {report}")
    print(f"weights:     {run_dir / 'best.safetensors'}")
    print(f"predictions: {run_dir / 'predictions'}")


def declare_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data", default="data/shapes", help="dataset folder (generated if absent)"
    )
    parser.add_argument("--out", default="runs/demo", help="run directory (replaced if a demo run)")
    parser.add_argument(
        "--train-images", type=int, default=4000, help="scenes to generate for training"
    )
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.iters=100")
    parser.set_defaults(func=run_demo)


def declare_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config, e.g. configs/demo_shapes.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=0.01")
    parser.add_argument("--resume", action="store_true", help="continue RUN_DIR/last.pt")
    parser.add_argument(
        "--from",
        dest="start",
        metavar="WEIGHTS",
        help="start from these weights (.safetensors or a run directory): tensors whose name "
        "and shape match are loaded, the rest (e.g. the classifier) re-initialised",
    )
    parser.set_defaults(func=run_train)


def add_commands(commands) -> None:
    commands.add_lazy("demo", "generate shapes data, train, evaluate, predict", declare_demo)
    commands.add_lazy("train", "train a model from a YAML config", declare_train)
