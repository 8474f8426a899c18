"""FastFCN's claim: JPU on an output-stride-32 backbone against the same head on a dilated
output-stride-8 backbone, GFLOPs and latency ratio at 512x512, in one run.

    .venv/bin/python benchmarks/fastfcn_jpu.py [--repeats 20] [--size 512] [--device cpu]
        [--heads encnet psp aspp] [--encoder resnet50s] [--threads 2]

For each head, two models with PASCAL-Context's 59 classes: `fastfcn` (JPU, OS 32) and
`fastfcn jpu=False` (no JPU, the backbone dilated to OS 8: EncNet / PSPNet / DeepLab v3 as
FastFCN compares them). GFLOPs from seglab.benchmark.count_flops (2 per multiply-accumulate);
latency with one harness for all: batch 1, eval, no_grad, warm-up forwards, then `repeats`
rounds timing every model once each in alternating order (so load from other processes hits
all alike), synchronising on CUDA. Reported: the median per model and the median of the
per-round dilated / JPU ratios (the paper's "3 times faster" is a ratio of this kind; its FPS
protocol, test_fps_params.py, is batch 1 at 3x512x512). Prints a Markdown table and writes it as
the "FastFCN: JPU vs dilated backbone" section of benchmarks/RESULTS.md (--no-write: print only).
"""

from __future__ import annotations

import argparse
import platform
import shlex
import statistics
import sys
import time

import torch
from results_file import write_section  # benchmarks/, the script's folder, is on sys.path

from seglab.benchmark import count_flops
from seglab.models import create_model

HEADING = "## FastFCN: JPU vs dilated backbone"
NUM_CLASSES = 59  # PASCAL-Context, as in the FastFCN README


def time_forward(model: torch.nn.Module, x: torch.Tensor) -> float:
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    model(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def build_pairs(heads: list[str], encoder: str, device: str) -> dict[str, torch.nn.Module]:
    models = {}
    for head in heads:
        for jpu in (True, False):
            label = f"{head} {'JPU OS32' if jpu else 'dilated OS8'}"
            model = create_model("fastfcn", NUM_CLASSES, 3, encoder=encoder, head=head, jpu=jpu)
            models[label] = model.eval().to(device)
    return models


def run(args: argparse.Namespace) -> list[dict]:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = build_pairs(args.heads, args.encoder, args.device)
    size = (args.size, args.size)
    gflops = {label: count_flops(model, size) / 1e9 for label, model in models.items()}
    x = torch.randn(1, 3, *size, device=args.device)
    times: dict[str, list[float]] = {label: [] for label in models}
    with torch.no_grad():
        for _ in range(args.warmup):
            for model in models.values():
                model(x)
        for round_ in range(args.repeats):
            order = list(models) if round_ % 2 == 0 else list(reversed(models))
            for label in order:
                times[label].append(time_forward(models[label], x))
    rows = []
    for head in args.heads:
        jpu, dilated = f"{head} JPU OS32", f"{head} dilated OS8"
        ratios = [d / j for d, j in zip(times[dilated], times[jpu], strict=True)]
        rows.append(
            {
                "head": head,
                "jpu_ms": 1e3 * statistics.median(times[jpu]),
                "dilated_ms": 1e3 * statistics.median(times[dilated]),
                "speedup": statistics.median(ratios),
                "jpu_gflops": gflops[jpu],
                "dilated_gflops": gflops[dilated],
            }
        )
    return rows


def format_table(rows: list[dict], args: argparse.Namespace) -> str:
    cuda = args.device.startswith("cuda")
    device = torch.cuda.get_device_name() if cuda else platform.processor()
    command = shlex.join(["python", "benchmarks/fastfcn_jpu.py", *sys.argv[1:]])
    lines = [
        HEADING,
        "",
        f"FastFCN JPU vs dilated backbone, {args.encoder}, {NUM_CLASSES} classes, "
        f"{args.size}x{args.size}, batch 1, random weights, eval, no_grad, "
        f"{args.device} ({device or platform.machine()}), {args.threads} threads, "
        f"{args.warmup} warm-up and {args.repeats} timed rounds, every model once per round "
        f"in alternating order; ms = median per model, speed-up = median of the per-round "
        f"ratios; GFLOPs = seglab.benchmark.count_flops (2 per multiply-accumulate); "
        f"torch {torch.__version__}. Command: `{command}`",
        "",
        "| head | JPU OS32 ms | dilated OS8 ms | speed-up (dilated / JPU) | JPU GFLOPs | "
        "dilated GFLOPs |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['head']} | {r['jpu_ms']:.1f} | {r['dilated_ms']:.1f} | {r['speedup']:.2f}x | "
            f"{r['jpu_gflops']:.1f} | {r['dilated_gflops']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--encoder", default="resnet50s")
    parser.add_argument("--heads", nargs="+", default=["encnet", "psp", "aspp"])
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    table = format_table(run(args), args)
    print(table)
    if not args.no_write:
        write_section(HEADING, table)


if __name__ == "__main__":
    main()
