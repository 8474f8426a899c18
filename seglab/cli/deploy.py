"""`seglab export` and `seglab benchmark`: parse the arguments, call seglab.export and
seglab.benchmark, print their reports. RUN is a run directory (its best.safetensors) or a
weights file, resolved by seglab.runs.resolve_run as every other command does."""

from __future__ import annotations

import argparse
from typing import Any

from seglab.cli.options import parse_size
from seglab.errors import SeglabError


def _size(text: str, option: str) -> tuple[int, int]:
    h, w = parse_size(text, option)
    return h, w


def _sizes(text: str, option: str) -> list[tuple[int, int]]:
    """'97x131,100x150' -> [(97, 131), (100, 150)]."""
    return [_size(part, option) for part in text.split(",") if part.strip()]


def cmd_export(args: argparse.Namespace) -> None:
    """`seglab export RUN`: write RUN's weights as ONNX and print the report."""
    from seglab.export import export_onnx

    if args.format != "onnx":
        raise SeglabError(f"export format {args.format!r} is not supported; use --format onnx")
    report = export_onnx(
        args.run,
        args.out,
        dynamic=args.dynamic,
        opset=args.opset,
        check=args.check,
        size=_size(args.size, "--size"),
        exporter=args.exporter,
        check_sizes=_sizes(args.check_sizes, "--check-sizes"),
    )
    print(report.summary())


def declare_export(parser: argparse.ArgumentParser) -> None:
    from seglab.export import CHECK_SIZES, EXPORTERS

    parser.add_argument("run", help="run directory (its best.safetensors) or NAME.safetensors")
    parser.add_argument("--format", default="onnx", choices=["onnx"], help="export format")
    parser.add_argument("--out", help="output file (default: the weights path with .onnx)")
    parser.add_argument(
        "--dynamic",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="dynamic batch and spatial size where the model allows (default on)",
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument(
        "--size", default="512x512", help="example input HxW; the fixed size if not dynamic"
    )
    parser.add_argument(
        "--check-sizes",
        default=",".join(f"{h}x{w}" for h, w in CHECK_SIZES),
        help="HxW,... where a dynamic graph must agree with PyTorch besides --size "
        "(default: %(default)s)",
    )
    parser.add_argument("--exporter", default="auto", choices=list(EXPORTERS))
    parser.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compare onnxruntime with PyTorch before writing (default on)",
    )
    parser.set_defaults(func=cmd_export)


def cmd_benchmark(args: argparse.Namespace) -> None:
    """`seglab benchmark`: print the table (and write JSON if asked)."""
    import json

    import torch
    import yaml

    from seglab.benchmark import benchmark, format_report

    if args.threads:
        torch.set_num_threads(args.threads)
    options: dict[str, Any] = {}
    if args.small:
        from seglab.models import model_info

        options = dict(model_info(args.model).small_options)
    for item in args.option or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SeglabError(f"--option {item!r} is not KEY=VALUE, e.g. encoder=mobilenetv2_100")
        options[key] = yaml.safe_load(value)
    report = benchmark(
        args.model,
        size=_size(args.size, "--size"),
        batch=args.batch,
        device=args.device,
        repeats=args.repeats,
        warmup=args.warmup,
        variants=[v.strip() for v in args.variants.split(",") if v.strip()],
        options=options or None,
    )
    print(format_report(report))
    if args.json:
        from seglab.atomic import write_text_atomically

        write_text_atomically(args.json, json.dumps(report, indent=2))
        print(f"wrote {args.json}")


def declare_benchmark(parser: argparse.ArgumentParser) -> None:
    from seglab.benchmark import VARIANTS

    parser.add_argument(
        "model", help="run directory, NAME.safetensors, or a model name (paper configuration)"
    )
    parser.add_argument("--size", default="512x512", help="input HxW (default 512x512)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--variants",
        default="eager",
        help=f"comma-separated, from: {','.join(VARIANTS)} (default eager)",
    )
    parser.add_argument("--repeats", type=int, default=20, help="timed passes (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed passes first (default 3)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--small", action="store_true", help="a model name in its small test configuration"
    )
    parser.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="model option for a model name, e.g. --option encoder=mobilenetv2_100 (repeatable)",
    )
    parser.add_argument("--json", help="also write the full report to this JSON file")
    parser.set_defaults(func=cmd_benchmark)


def add_commands(commands) -> None:
    """Declare `seglab export` and `seglab benchmark` (arguments only when chosen)."""
    commands.add_lazy("export", "export weights to ONNX, checked by onnxruntime", declare_export)
    commands.add_lazy(
        "benchmark",
        "latency, throughput, GFLOPs and memory, with deployment variants",
        declare_benchmark,
    )


__all__ = ["add_commands"]
