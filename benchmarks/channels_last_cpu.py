"""Which model families run faster in channels_last on the CPU: seglab's CHANNELS_LAST_CPU.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/channels_last_cpu.py [--size 256] [--rounds 3]

Per registered model (default options, 21 classes, random weights): the BN-folded model as
prepare_for_inference builds it, contiguous (NCHW) and channels_last, each forward timed under
inference_mode at batch 1, 2 threads, in interleaved rounds (alternating order); reported: the
medians, the median per-round channels_last / contiguous ratio, the max |logit| difference
between the two and whether the labels agree. A family goes into
seglab.fast_inference.CHANNELS_LAST_CPU when its ratio is <= 0.90 and its logits agree to 1e-4.
Writes benchmarks/RESULTS.md's "## channels_last on the CPU" section.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from results_file import write_section

from seglab import create_model
from seglab.fast_inference import CHANNELS_LAST_CPU, prepare_for_inference

HEADING = "## channels_last on the CPU"
NAMES = (
    "fcn_resnet,deeplabv3_torchvision,deeplabv3,deeplabv3plus,pspnet,unet,segnet,bisenet,"
    "bisenet_r18,lednet,fcn8s,deeplabv1,deeplabv2,dfanet,dupsampling,refinenet,danet,fastfcn,"
    "dilated_context,acnet"
)


def measure(name: str, size: int, rounds: int) -> dict:
    torch.manual_seed(0)
    model = create_model(name, 21, 3).eval()
    x = torch.randn(1, 3, size, size)
    contiguous, _ = prepare_for_inference(model, "cpu", channels_last=False)
    last, _ = prepare_for_inference(model, "cpu", channels_last=True)
    del model
    times: dict[str, list[float]] = {"nchw": [], "nhwc": []}
    with torch.inference_mode():
        a, b = contiguous(x), last(x)
        diff = (a - b).abs().max().item()
        same = bool((a.argmax(1) == b.argmax(1)).all())
        for r in range(rounds):
            order = [("nchw", contiguous), ("nhwc", last)]
            for key, runner in order if r % 2 else order[::-1]:
                start = time.perf_counter()
                runner(x)
                times[key].append(time.perf_counter() - start)
    ratio = statistics.median(b / a for a, b in zip(times["nchw"], times["nhwc"], strict=True))
    return {
        "name": name,
        "nchw_ms": 1000 * statistics.median(times["nchw"]),
        "nhwc_ms": 1000 * statistics.median(times["nhwc"]),
        "ratio": ratio,
        "diff": diff,
        "same": same,
    }


def format_section(rows: list[dict], size: int, rounds: int) -> str:
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    lines = [
        HEADING,
        "",
        f"BN-folded forward (prepare_for_inference), contiguous vs channels_last, CPU, 2 threads, "
        f"batch 1, {size}x{size}, default options, 21 classes, random weights; median of "
        f"{rounds} interleaved rounds; torch {torch.__version__}, {os.cpu_count()} cores, load "
        f"average {load} at the end. Command: `OMP_NUM_THREADS=2 .venv/bin/python "
        f"benchmarks/channels_last_cpu.py --size {size} --rounds {rounds}`. In CHANNELS_LAST_CPU: "
        "ratio <= 0.90 and logits within 1e-4.",
        "",
        "| model | contiguous ms | channels_last ms | channels_last / contiguous | max abs logit "
        "diff | labels equal | in CHANNELS_LAST_CPU |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | {row['nchw_ms']:.0f} | {row['nhwc_ms']:.0f} | {row['ratio']:.3f} "
            f"| {row['diff']:.1e} | {'yes' if row['same'] else 'no'} | "
            f"{'yes' if row['name'] in CHANNELS_LAST_CPU else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", default=NAMES)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    for name in args.names.split(","):
        rows.append(measure(name, args.size, args.rounds))
        print(rows[-1], flush=True)
    section = format_section(rows, args.size, args.rounds)
    print(section)
    write_section(HEADING, section)


if __name__ == "__main__":
    main()
