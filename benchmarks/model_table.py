"""A row per registered model: learnable parameters, GFLOPs and CPU latency at 512x512.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/model_table.py [--models segnet pspnet ...]

Each model is built with its paper configuration (`paper_options` in the registry, random
weights). FLOPs are counted by torch.utils.flop_counter.FlopCounterMode on one forward of a
(1, 3, 512, 512) input; it counts 2 FLOPs per multiply-accumulate of convolutions and matrix
products only (pooling, unpooling, BN, ReLU and interpolation are not counted), so
GFLOPs = 2 x GMACs. Latency: eval mode, no_grad, batch 1, torch.set_num_threads(2), one warm-up
forward, the median of `--runs` timed forwards. The machine's two cores are shared with other
work, so latencies can be noisy. The table is written under its heading in
benchmarks/RESULTS.md, leaving the file's other sections alone.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from results_file import write_section

from seglab.benchmark import count_flops
from seglab.models import MODELS, count_parameters, create_model

HEADING = "## Model table (512x512, CPU)"
DEFAULT_MODELS = ["segnet", "pspnet", "dilated_context", "refinenet", "fcn8s", "unet"]


def measure(name: str, size: int = 512, runs: int = 3) -> dict:
    """Parameters, GMACs and median CPU latency (s) of `name`'s paper configuration."""
    options = dict(MODELS[name].paper_options)
    torch.manual_seed(0)
    model = create_model(name, **options).eval()
    x = torch.randn(1, options.get("in_channels", 3), size, size)
    flops = count_flops(model, (size, size))
    with torch.no_grad():
        model(x)  # warm-up
        times = []
        for _ in range(runs):
            tic = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - tic)
    return {
        "name": name,
        "options": options,
        "params": count_parameters(model),
        "gmacs": flops / 2e9,
        "gflops": flops / 1e9,
        "latency_s": statistics.median(times),
    }


def table(rows: list[dict], runs: int) -> str:
    lines = [
        HEADING,
        "",
        f"Paper configurations, random weights, input (1, 3, 512, 512); torch {torch.__version__},"
        f" {torch.get_num_threads()} threads. GFLOPs = 2 x GMACs (FlopCounterMode: convolutions"
        " and matrix products only). Latency: eval, no_grad, one warm-up, median of"
        f" {runs} runs on a CPU shared with other jobs (noisy). Reproduce with"
        " `OMP_NUM_THREADS=2 .venv/bin/python benchmarks/model_table.py`.",
        "",
        "| model | options | parameters | GMACs | GFLOPs | CPU latency (s) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        options = ", ".join(f"{k}={v}" for k, v in r["options"].items())
        lines.append(
            f"| {r['name']} | {options} | {r['params']:,} | {r['gmacs']:.1f} | "
            f"{r['gflops']:.1f} | {r['latency_s']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="registered names")
    parser.add_argument("--runs", type=int, default=3, help="timed forwards per model")
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    for name in args.models:
        row = measure(name, args.size, args.runs)
        print(
            f"{name}: {row['params']:,} params, {row['gflops']:.1f} GFLOPs, "
            f"{row['latency_s']:.2f} s",
            flush=True,
        )
        rows.append(row)
    write_section(HEADING, table(rows, args.runs))


if __name__ == "__main__":
    main()
