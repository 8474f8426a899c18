"""`seglab eval` and `seglab crf-search`: a run's weights on its validation data."""

from __future__ import annotations

import argparse

from seglab.cli.options import (
    add_inference_options,
    add_speed_options,
    crf_presets,
    inference_overrides,
    parse_numbers,
)

WEIGHTS_HELP = "a run directory (its best.safetensors and config.yaml) or NAME.safetensors"


def add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", help="dataset root (default: the run's)")
    parser.add_argument("--format", help="dataset layout (default: the run's, else folder)")
    parser.add_argument("--split", help="split (default: the run's val split)")


def run_eval(args: argparse.Namespace) -> None:
    from seglab.engine.evaluate_run import evaluate_checkpoint

    metrics, report = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        args.split,
        args.out,
        inference_overrides(args),
        args.crf,
        progress=not args.quiet,
        data_format=args.format,
        variant=args.variant,
        backend=args.backend,
    )
    if "summary" in metrics:  # instance weights: COCO AP (seglab/engine/instance_eval.py)
        ap = {key: "-" if v is None else f"{100 * v:.1f}" for key, v in metrics["summary"].items()}
        print(f"mask AP {ap['mask_AP']}  AP50 {ap['mask_AP50']}  AP75 {ap['mask_AP75']}  "
              f"box AP {ap['box_AP']}  AP50 {ap['box_AP50']}\nreport: {report}")  # fmt: skip
        return
    print(
        f"mIoU {100 * metrics['mean_iou']:.2f}  pixel acc {100 * metrics['pixel_accuracy']:.2f}"
        f"  mean acc {100 * metrics['mean_accuracy']:.2f}  FWIoU {100 * metrics['fw_iou']:.2f}"
        f"  Dice {100 * metrics['mean_dice']:.2f}  boundary F {100 * metrics['boundary_f']:.2f}"
        f" ({metrics['boundary_tolerance_px']:g} px)"
    )
    if "crf" in metrics:
        print(f"with CRF ({args.crf}): mIoU {100 * metrics['crf']['mean_iou']:.2f}")
    print(f"inference: {metrics['inference_variant']}")
    print(f"report: {report}")


def run_crf_search(args: argparse.Namespace) -> None:
    from seglab.engine.evaluate_run import search_crf

    grid = [
        parse_numbers(args.w1, "--w1"),
        parse_numbers(args.alpha, "--alpha"),
        parse_numbers(args.beta, "--beta"),
    ]
    baseline, results, count = search_crf(
        args.checkpoint, *grid, args.preset, args.images, args.data, args.split, args.format,
        progress=not args.quiet,
    )  # fmt: skip
    print(f"network alone: mIoU {100 * baseline:.2f}")
    print(f"{'w1':>6} {'theta_alpha':>12} {'theta_beta':>11} {'mIoU':>7}")
    for params, miou in results[: args.top]:
        print(
            f"{params.w1:>6g} {params.theta_alpha:>12g} {params.theta_beta:>11g} {100 * miou:>7.2f}"
        )
    best = results[0][0]
    print(
        f"best on {count} images: --crf {args.preset} "
        f"with w1={best.w1:g} theta_alpha={best.theta_alpha:g} theta_beta={best.theta_beta:g}"
    )


def declare_eval(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help=WEIGHTS_HELP)
    add_data_options(parser)
    parser.add_argument("--out", help="report folder (default: report/ beside the weights)")
    add_inference_options(parser)
    add_speed_options(parser)
    parser.set_defaults(func=run_eval)


def declare_crf_search(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help=WEIGHTS_HELP)
    add_data_options(parser)
    parser.add_argument("--images", type=int, default=100, help="images to search on (100)")
    parser.add_argument(
        "--preset",
        default="deeplab-largefov",
        choices=crf_presets(),
        help="where w2, theta_gamma and iterations come from (default deeplab-largefov)",
    )
    parser.add_argument("--w1", default="3,4,5", help="comma-separated w1 values")
    parser.add_argument("--alpha", default="30,50,80,121", help="theta_alpha values")
    parser.add_argument("--beta", default="3,5,10", help="theta_beta values")
    parser.add_argument("--top", type=int, default=10, help="rows to print")
    parser.set_defaults(func=run_crf_search)


def add_commands(commands) -> None:
    commands.add_lazy("eval", "evaluate weights or a run directory; write a report", declare_eval)
    commands.add_lazy(
        "crf-search",
        "grid-search the dense CRF's appearance kernel on validation images",
        declare_crf_search,
    )
