"""`seglab models` (the registry) and `seglab convert` (torchvision weights -> seglab weights)."""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

from seglab.errors import SeglabError


def format_options(options: dict) -> str:
    """{'width': 64, 'encoder': <required>} -> 'width=64, encoder (required)'."""
    return ", ".join(
        f"{name} (required)" if default is inspect.Parameter.empty else f"{name}={default!r}"
        for name, default in options.items()
    )


def run_models(args: argparse.Namespace) -> None:
    if not (args.table or args.verbose):  # names and summaries only: no torch import
        from seglab.cli.model_index import model_summaries

        summaries = model_summaries()
        width = max(len(name) for name in summaries) + 1
        for name, summary in summaries.items():
            print(f"{name:<{width}} {summary}")
        return
    from seglab.models import MODELS

    width = max(len(name) for name in MODELS) + 1
    for name in sorted(MODELS):
        info = MODELS[name]
        line = f"{name:<{width}} {info.summary}"
        if args.table:
            import torch

            from seglab.benchmark import model_gflops
            from seglab.models import count_parameters, create_model

            paper = info.paper_options or {"num_classes": 21}
            with torch.device("meta"):  # shapes only: no memory for 100M+ parameters
                params = count_parameters(create_model(name, **paper))
            # FlopCounterMode: 2 per MAC; an instance model's cost depends on its detections
            semantic = info.cls.task == "semantic"
            gflops = f"{model_gflops(name, (512, 512), **paper):>7.1f}" if semantic else "    n/a"
            line = (
                f"{name:<{width}} {params:>13,d} params {gflops} GFLOPs@512x512  "
                f"{info.summary} ({paper})"
            )
        print(line)
        if args.verbose:
            print(f"{'':<{width}} options: {format_options(info.options())}")


def run_convert(args: argparse.Namespace) -> None:
    from seglab.models.torchvision_convert import load_torchvision_checkpoint
    from seglab.weights import save_weights

    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise SeglabError(f"--out {out}: seglab weights are written as NAME.safetensors")
    model = load_torchvision_checkpoint(args.checkpoint)
    save_weights(model, out)
    spec = model.seglab_spec
    print(
        f"wrote {out} (+ {out.with_suffix('.yaml').name}): {spec['name']} "
        f"{spec['options']} with {spec['num_classes']} classes"
    )


def declare_models(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", action="store_true", help="with parameter counts and GFLOPs")
    parser.add_argument(
        "--verbose", "-v", action="store_true", help="with each model's options and defaults"
    )
    parser.set_defaults(func=run_models)


def declare_convert(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "checkpoint",
        help="state dict of torchvision fcn_resnet50/101, "
        "deeplabv3_resnet50/101 or deeplabv3_mobilenet_v3_large (.pth or .safetensors)",
    )
    parser.add_argument("--out", required=True, help="NAME.safetensors to write")
    parser.set_defaults(func=run_convert)


def add_commands(commands) -> None:
    commands.add_lazy("models", "list the registered models", declare_models)
    commands.add_lazy(
        "convert", "turn a torchvision segmentation checkpoint into seglab weights", declare_convert
    )
