"""`seglab predict`: label image files and folders with a run's weights."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from seglab.cli.evaluate import WEIGHTS_HELP
from seglab.cli.options import add_inference_options, add_speed_options, inference_overrides


def run_predict(args: argparse.Namespace) -> int:
    from seglab.predict import predict_files

    result = predict_files(
        args.checkpoint,
        args.inputs,
        args.out,
        inference_overrides(args),
        args.crf,
        progress=not args.quiet,
        labelids=args.labelids,
        variant=args.variant,
        backend=args.backend,
        depth=args.depth,
    )
    out = Path(args.out)
    if result.results is not None:  # instance weights
        print(f"wrote {result.results} and {len(result.written)} overlays to {out / 'overlays'}")
    else:
        print(f"inference: {result.variant}")
        print(
            f"wrote {len(result.written)} label maps to {out / 'labels'} and overlays to "
            f"{out / 'overlays'}"
        )
    if not result.failed:
        return 0
    print(f"seglab: error: {len(result.failed)} image(s) could not be labelled:", file=sys.stderr)
    for _, reason in result.failed:
        print(f"  {reason}", file=sys.stderr)
    return 2


def declare_predict(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help=WEIGHTS_HELP)
    parser.add_argument("inputs", nargs="+", help="image files or folders (searched recursively)")
    parser.add_argument("--out", required=True, help="output folder (labels/ and overlays/)")
    parser.add_argument(
        "--labelids",
        action="store_true",
        help="write Cityscapes labelIds (for submission) instead of train ids",
    )
    parser.add_argument(
        "--depth",
        metavar="DIR",
        help="RGB-D models: the folder of depth PNGs named as the images, with depth.txt in it "
        "or beside it (default: the folder layout's depth/ beside the images' folder)",
    )
    add_inference_options(parser)
    add_speed_options(parser)
    parser.set_defaults(func=run_predict)


def add_commands(commands) -> None:
    commands.add_lazy("predict", "label images or folders of images", declare_predict)
