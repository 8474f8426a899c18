"""Dense CRF: seglab (pure PyTorch permutohedral lattice) against pydensecrf, same inputs.

    .venv/bin/python benchmarks/crf_benchmark.py [--preset pydensecrf] [--repeats 3]

Each case runs pydensecrf and seglab alternately `repeats` times on the same unary and image
(so a busy machine slows both alike) and reports the best wall time of each, including the
lattice construction, the CPU time of that run (all threads; pydensecrf uses one), and the
share of pixels where their labels agree. On a machine shared with other jobs, run it with
OMP_WAIT_POLICY=PASSIVE: PyTorch's OpenMP threads otherwise spin while waiting for a core
that another process holds. Cases: a 500x375
image with 21 classes (uniform colour noise, the lattice's worst case, and a smooth blocky
image), and a 1024x512 blocky image with 19 classes. The unary is a blocky label map plus
Gaussian noise, through a softmax. seglab caches the smoothness-kernel lattice per image size
(it depends on positions only), so repeated runs reuse it as an evaluation loop over
same-size images would; --cold rebuilds it every run, as pydensecrf does. seglab runs twice:
with its default precision (float16 lattice passes when the lattice has more vertices than
half the pixels, as on the noise image; see dense_crf's vertex_dtype) and with every pass in
float32 (densecrf's numbers).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from seglab.crf import PRESETS, DenseCRFParams, dense_crf
from seglab.crf.dense import _smoothness_kernel
from seglab.crf.reference import pydensecrf_labels


def make_case(height: int, width: int, classes: int, image_kind: str, seed: int = 0):
    """(probabilities (K, H, W) float32, image (3, H, W) uint8) for one benchmark case."""
    g = torch.Generator().manual_seed(seed)
    block = 25

    def blocks(channels: int, high: int) -> torch.Tensor:
        coarse = torch.randint(
            0, high, (channels, height // block + 1, width // block + 1), generator=g
        )
        fine = coarse.repeat_interleave(block, 1).repeat_interleave(block, 2)
        return fine[:, :height, :width]

    if image_kind == "noise":
        image = torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8)
    else:
        image = blocks(3, 256).to(torch.uint8)
    labels = blocks(1, classes)[0]
    one_hot = torch.nn.functional.one_hot(labels, classes).permute(2, 0, 1).float()
    logits = 2.0 * one_hot + 1.5 * torch.randn(classes, height, width, generator=g)
    return torch.softmax(logits, 0), image


def run_seglab(probabilities: torch.Tensor, image: torch.Tensor, p: DenseCRFParams):
    return dense_crf(probabilities[None], image[None], preset=p)[0].argmax(0).numpy()


def run_seglab_float32(probabilities: torch.Tensor, image: torch.Tensor, p: DenseCRFParams):
    """seglab with every lattice pass in float32, densecrf's numbers (vertex_dtype)."""
    q = dense_crf(probabilities[None], image[None], preset=p, vertex_dtype=torch.float32)
    return q[0].argmax(0).numpy()


def timed(fn, *args):
    """(wall seconds, CPU seconds of this process over all threads, result)."""
    start, start_cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return time.perf_counter() - start, time.process_time() - start_cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="pydensecrf", choices=sorted(PRESETS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--cold",
        action="store_true",
        help="rebuild seglab's smoothness-kernel lattice on every run (it is cached per size)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = PRESETS[args.preset]
    cases = [
        ("500x375, 21 classes, uniform noise", 375, 500, 21, "noise"),
        ("500x375, 21 classes, smooth blocks", 375, 500, 21, "smooth"),
        ("1024x512, 19 classes, smooth blocks", 512, 1024, 19, "smooth"),
    ]
    print(
        f"preset {args.preset} ({params}), torch {torch.__version__}, "
        f"{args.threads} threads, {os.cpu_count()}-core {platform.machine()} CPU, "
        f"load average {os.getloadavg()[0]:.1f} at start, "
        f"{'cold' if args.cold else 'warm'} smoothness-kernel cache"
    )
    runners = {
        "pydensecrf": pydensecrf_labels,
        "seglab": run_seglab,
        "seglab float32": run_seglab_float32,
    }
    print(
        "| case | pydensecrf s | seglab s | speed-up | agreement "
        "| seglab float32 s | speed-up | agreement | CPU s: pydensecrf / seglab / float32 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    run_seglab(*make_case(64, 64, 3, "noise"), params)  # warm-up: first-call overheads
    for name, h, w, k, kind in cases:
        probabilities, image = make_case(h, w, k, kind)
        times = {runner: [] for runner in runners}
        labels = {}
        for _ in range(args.repeats):
            for runner, fn in runners.items():
                if args.cold:
                    _smoothness_kernel.cache_clear()
                wall, cpu, labels[runner] = timed(fn, probabilities, image, params)
                times[runner].append((wall, cpu))
        best = {runner: min(times[runner]) for runner in runners}
        reference = labels["pydensecrf"]
        row = [name, f"{best['pydensecrf'][0]:.3f}"]
        for runner in ("seglab", "seglab float32"):
            agreement = 100.0 * float((labels[runner] == reference).mean())
            speedup = best["pydensecrf"][0] / best[runner][0]
            row += [f"{best[runner][0]:.3f}", f"{speedup:.2f}x", f"{agreement:.2f}%"]
        row.append(" / ".join(f"{best[runner][1]:.2f}" for runner in runners))
        print("| " + " | ".join(row) + " |")
    print(f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
