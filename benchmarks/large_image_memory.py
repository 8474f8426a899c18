"""Peak memory of sliding-window inference on large images (CPU).

Each measurement runs in a fresh Python process: build the model, warm it up on a small image,
allocate the (1, 3, S, S) input, then reset the kernel's resident-set high-water mark
(`echo 5 > /proc/self/clear_refs`, Linux >= 4.0) and read VmHWM from /proc/self/status after
slide_probabilities returns. "Extra" = VmHWM - resident size just before the call: every byte
the call touched, torch's allocations included (tracemalloc cannot see them). glibc is told to
serve large blocks with mmap so that freed memory leaves the process and is not double-counted.

    python benchmarks/large_image_memory.py                 # 1024, 2048, 4096; writes RESULTS.md
    python benchmarks/large_image_memory.py --measure 2048  # one size, JSON on stdout
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from results_file import RESULTS, write_section

SECTION = "## Sliding-window memory"
MIB = 2**20


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def measure(
    size: int, classes: int, window: int, batch: int, model_name: str, function: str
) -> dict:
    """Run in this process (meant to be a fresh one): peak memory of one sliding-window pass
    of seglab.inference.slide_<function> (probabilities or labels)."""
    import torch

    from seglab import inference

    slide = getattr(inference, f"slide_{function}")

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)
    if model_name == "unet":
        from seglab.models.unet import UNet

        model = UNet(classes, in_channels=3, width=16, depth=4, padding="same")
    else:  # "conv": a 3x3 conv, for quick checks of the harness itself
        model = torch.nn.Conv2d(3, classes, 3, padding=1)
    model.eval()
    stride = [2 * window // 3] * 2
    with torch.no_grad():
        slide(model, torch.randn(1, 3, window, window), [window] * 2, stride, batch)
        images = torch.randn(1, 3, size, size)
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kib("VmRSS") * 1024
        start = time.perf_counter()
        probs = slide(model, images, [window] * 2, stride, batch)
        seconds = time.perf_counter() - start
    peak = _status_kib("VmHWM") * 1024
    output = probs.numel() * probs.element_size()
    return {
        "size": size,
        "classes": classes,
        "window": window,
        "batch": batch,
        "model": model_name,
        "function": function,
        "input_bytes": images.numel() * images.element_size(),
        "output_bytes": output,
        "extra_bytes": peak - before,
        "beyond_output_bytes": peak - before - output,
        "seconds": seconds,
    }


def measure_in_subprocess(
    size: int,
    classes: int = 19,
    window: int = 512,
    batch: int = 4,
    model: str = "unet",
    function: str = "probabilities",
) -> dict:
    """measure() in a fresh interpreter, so earlier allocations cannot hide the peak."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, __file__, "--measure", str(size), "--classes", str(classes)]
    command += ["--window", str(window), "--batch", str(batch), "--model", model]
    command += ["--function", function]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"measurement of {size} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", type=int, help="measure one size here, print JSON")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--classes", type=int, default=19)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--model", choices=["unet", "conv"], default="unet")
    parser.add_argument(
        "--functions", nargs="+", choices=["probabilities", "labels"], default=["probabilities"]
    )
    parser.add_argument("--function", choices=["probabilities", "labels"], default="probabilities")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    if args.measure:
        result = measure(
            args.measure, args.classes, args.window, args.batch, args.model, args.function
        )
        print(json.dumps(result))
        return

    rows = []
    for function, size in ((f, s) for f in args.functions for s in args.sizes):
        r = measure_in_subprocess(size, args.classes, args.window, args.batch, args.model, function)
        rows.append(
            f"| slide_{function} | {size}x{size} | {r['input_bytes'] / MIB:.0f} "
            f"| {r['output_bytes'] / MIB:.0f} "
            f"| {r['extra_bytes'] / MIB:.0f} | {r['beyond_output_bytes'] / MIB:.0f} "
            f"| {r['seconds']:.1f} |"
        )
        print(rows[-1], flush=True)
    table = (
        f"{SECTION}\n\n"
        f"`python benchmarks/large_image_memory.py` ({platform.machine()} CPU, 1 thread): "
        f"seglab.inference.slide_probabilities (returns (1, K, H, W) float32) and slide_labels "
        f"(returns (1, H, W) uint8, streamed by rows of windows), model {args.model} "
        f"({'U-Net width 16, depth 4, same padding' if args.model == 'unet' else '3x3 conv'}), "
        f"{args.classes} classes, window {args.window}, stride {2 * args.window // 3}, "
        f"{args.batch} windows per pass, batch of one image. Peak = growth of the process's "
        "resident-set high-water mark (VmHWM) during the call, in a fresh process; "
        "output = what the call returns; the float32 input is allocated before. "
        "Most of the constant part is the model's activations for one pass of windows; "
        "slide_labels passes one row of windows at a time, so at 1024 (3 windows a row) its "
        "passes hold 3 windows, not 4, and its peak there is lower for that reason.\n\n"
        "| function | image | input MiB | output MiB | peak extra MiB "
        "| peak beyond output MiB | s |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n"
    )
    if not args.no_write:
        write_section(SECTION, table)
        print(f"wrote {SECTION!r} in {RESULTS}")


if __name__ == "__main__":
    main()
