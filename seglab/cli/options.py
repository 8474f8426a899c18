"""Argument types and option groups shared by several commands.

A malformed value is a SeglabError naming the option and the form it expects, so it reaches
the user as one line with exit status 2, as every other mistake does.
"""

from __future__ import annotations

import argparse
from typing import Any

# the parsers live in a lower module (the server uses them too); the commands import them here
from seglab.text_values import parse_numbers, parse_size


def crf_presets() -> list[str]:
    """The dense CRF preset names, from seglab.crf.params.PRESETS."""
    from seglab.crf.params import PRESETS

    return sorted(PRESETS)


def add_inference_options(parser: argparse.ArgumentParser) -> None:
    """--mode --crop --scales --flip (each overrides only itself on the run's config) and --crf."""
    from seglab.runs import INFERENCE_MODES

    group = parser.add_argument_group(
        "inference", "each option replaces only that setting of the run's inference section"
    )
    group.add_argument("--mode", choices=INFERENCE_MODES, help="inference mode")
    group.add_argument(
        "--crop", help="window (slide) or tile (overlap_tile) size HxW, e.g. 512x512"
    )
    group.add_argument("--scales", help="comma-separated test scales, e.g. 0.5,0.75,1,1.25,1.5")
    group.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="average horizontal flips (--no-flip: do not, whatever the run's config says)",
    )
    presets = crf_presets()
    group.add_argument(
        "--crf",
        metavar="PRESET",
        choices=presets,
        help=f"dense CRF post-processing: {', '.join(presets)}",
    )


def add_speed_options(parser: argparse.ArgumentParser) -> None:
    """--variant and --backend: how the model runs (seglab/fast_inference.py)."""
    from seglab.fast_inference import BACKENDS, VARIANTS

    group = parser.add_argument_group(
        "speed", "how the model runs; the default gives eager's labels"
    )
    group.add_argument(
        "--variant",
        choices=VARIANTS,
        default="auto",
        help="auto: BN folded, best layout for the device; eager: the model as trained; "
        "fp16/bf16: autocast on a GPU",
    )
    group.add_argument(
        "--backend",
        choices=BACKENDS,
        default="torch",
        help="onnxruntime: the ONNX graph on the CPU",
    )


def inference_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The inference settings given on the command line, for seglab.runs.run_inference."""
    overrides: dict[str, Any] = {}
    if args.mode is not None:
        overrides["mode"] = args.mode
    if args.crop is not None:
        overrides["crop_size"] = parse_size(args.crop, "--crop")
    if args.scales is not None:
        overrides["scales"] = parse_numbers(args.scales, "--scales")
    if args.flip is not None:
        overrides["flip"] = args.flip
    return overrides
