"""`seglab weak CONFIG`: the image-tag pipeline (seglab/weak/pipeline.py): CAMs, pseudo
masks, a segmentation model trained on them, its val mIoU."""

from __future__ import annotations

import argparse


def cmd_weak(args: argparse.Namespace) -> None:
    from seglab.weak.pipeline import load_weak_config, run_weak

    cfg, weak = load_weak_config(args.config, args.overrides)
    run_weak(cfg, weak, progress=not args.quiet)


def declare_weak(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="weak pipeline YAML, e.g. configs/weak_mdc_shapes.yaml")
    parser.add_argument(
        "overrides",
        nargs="*",
        help="section.key=value, e.g. weak.cam.iters=100 train.iters=500 run_dir=runs/x",
    )
    parser.set_defaults(func=cmd_weak)


def add_commands(commands) -> None:
    """Declare `seglab weak` (arguments only when chosen)."""
    commands.add_lazy(
        "weak",
        "train from image tags: CAMs (MDC, FickleNet) -> pseudo masks -> model",
        declare_weak,
    )


__all__ = ["add_commands"]
