"""CPU latency of seglab's torchvision-equivalent models next to torchvision's, in one run.

    .venv/bin/python benchmarks/torchvision_latency.py [--repeats 7] [--size 512]

Same harness for both: batch 1, eval mode, no_grad, torch.set_num_threads(2), warm-up
forwards, then `repeats` rounds that time every model once each, interleaved (in alternating
order), so that load from other processes on a shared CPU hits all models alike; the median
per model and the median of the per-round seglab / torchvision ratios are reported.
seglab's models hold torchvision's weights (load_torchvision_checkpoint), so the outputs are
also compared. Writes the table to benchmarks/RESULTS.md under "## torchvision-equivalent
latency", keeping the file's other sections.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from results_file import write_section
from torchvision.models import segmentation

from seglab.models.torchvision_convert import load_torchvision_checkpoint

HEADING = "## torchvision-equivalent latency"
PAIRS = {  # torchvision builder -> seglab model name (for the table)
    "deeplabv3_resnet50": "deeplabv3_torchvision (encoder=resnet50)",
    "fcn_resnet50": "fcn_resnet (encoder=resnet50)",
}


def time_forward(model: torch.nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x)
    return time.perf_counter() - start


def run(repeats: int, warmup: int, size: int) -> list[dict]:
    torch.set_num_threads(2)
    torch.manual_seed(0)
    x = torch.randn(1, 3, size, size)
    models: dict[str, torch.nn.Module] = {}
    max_diff: dict[str, float] = {}
    for tv_name, seglab_name in PAIRS.items():
        reference = getattr(segmentation, tv_name)(
            weights=None, weights_backbone=None, num_classes=21
        ).eval()
        model = load_torchvision_checkpoint(reference.state_dict())
        models[f"torchvision {tv_name}"] = reference
        models[f"seglab {seglab_name}"] = model
        with torch.no_grad():
            max_diff[tv_name] = (reference(x)["out"] - model(x)).abs().max().item()
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for _ in range(warmup):
            for model in models.values():
                model(x)
        for round_ in range(repeats):
            # alternate the order, so that running second (warm caches or not) favours no side
            order = list(models.items()) if round_ % 2 == 0 else list(models.items())[::-1]
            for name, model in order:
                times[name].append(time_forward(model, x))
            print(
                f"round {round_ + 1}/{repeats}: "
                + ", ".join(f"{n.split()[1]} {t[-1] * 1000:.0f} ms" for n, t in times.items())
            )
    rows = []
    for tv_name, seglab_name in PAIRS.items():
        reference_times = times[f"torchvision {tv_name}"]
        our_times = times[f"seglab {seglab_name}"]
        # the ratio within each round cancels load that lasts longer than one round
        ratios = [ours / ref for ours, ref in zip(our_times, reference_times, strict=True)]
        rows.append(
            {
                "architecture": tv_name,
                "torchvision_ms": 1000 * statistics.median(reference_times),
                "seglab_ms": 1000 * statistics.median(our_times),
                "ratio": statistics.median(ratios),
                "max_abs_diff": max_diff[tv_name],
            }
        )
    return rows


def format_section(rows: list[dict], repeats: int, warmup: int, size: int) -> str:
    lines = [
        HEADING,
        "",
        f"CPU forward latency, batch 1, {size}x{size}, eval + no_grad, 2 threads; median of "
        f"{repeats} interleaved rounds after {warmup} warm-up rounds; both sides hold the same "
        f"weights. Machine: {platform.processor() or platform.machine()}, torch "
        f"{torch.__version__}; the CPU is shared with other jobs, so compare the columns of one "
        f"row, not runs; the ratio is the median of the per-round ratios. Command: "
        f"`.venv/bin/python benchmarks/torchvision_latency.py --repeats {repeats}`.",
        "",
        "| architecture | torchvision (ms) | seglab (ms) | seglab / tv, per round | max abs diff |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['architecture']} | {row['torchvision_ms']:.0f} | {row['seglab_ms']:.0f} | "
            f"{row['ratio']:.3f} | {row['max_abs_diff']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    rows = run(args.repeats, args.warmup, args.size)
    section = format_section(rows, args.repeats, args.warmup, args.size)
    print(section)
    write_section(HEADING, section)


if __name__ == "__main__":
    main()
