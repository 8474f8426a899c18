"""Dense CRF: seglab (its compiled kernel, or the PyTorch path) against pydensecrf, same inputs.

    .venv/bin/python benchmarks/crf_benchmark.py [--repeats 3] [--warm] [--quick] [--no-write]

seglab runs dense_crf_labels (labels, as pydensecrf_labels returns them) with the default
backend: the compiled kernel (seglab/crf/native.py, built on first use, before the timed runs)
where a C++ compiler is, else the PyTorch path; the script prints which.
SEGLAB_CRF_BACKEND=torch measures the PyTorch path.

Each case runs pydensecrf, seglab with 2 threads and seglab with 1 thread alternately `repeats`
times on the same unary and image (so a drifting machine slows all alike) and reports the best
wall time of each, the CPU time of that run (all threads; pydensecrf uses one), and the share
of pixels where seglab's labels agree with pydensecrf's. Both lattices are built inside every
timed call (the smoothness lattice, which seglab caches per image size, is cleared first),
as pydensecrf does; --warm keeps the cache, as in an evaluation loop over same-size images.

Cases: the synthetic ones (a 500x375 image with 21 classes, uniform colour noise, the lattice's
worst case, and a smooth blocky image; a 1024x512 blocky image with 19 classes; the unary is a
blocky label map plus Gaussian noise, through a softmax) and natural photos from scikit-image
(textures, soft edges, many colours) with unaries that look like a stride-8 network's: a label
map that follows the photo's edges (SLIC superpixels, each given a random class), averaged over
8x8 cells, noisy at that resolution (which confuses classes in some cells), then bilinearly
upsampled and put through a softmax. The natural cases need scikit-image (the `test` extra).
"""

from __future__ import annotations

import os

# The photo cases' unaries come from scikit-image (SLIC, numpy); numpy's and scipy's OpenBLAS
# thread pools then spin-wait on the cores for a while, which slows whatever threaded code runs
# next (seglab at 2 threads far more than single-threaded pydensecrf). They are not part of
# either CRF, so the benchmark keeps them to one thread (before numpy is imported).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F
from results_file import write_section  # benchmarks/, the script's folder, is on sys.path

from seglab.crf import PRESETS, DenseCRFParams, dense_crf_labels, native
from seglab.crf.dense import _smoothness_kernel
from seglab.crf.reference import pydensecrf_labels

HEADING = "## Dense CRF"
# scikit-image photo, classes (the range: 500-640 px, 5-21 classes).
PHOTOS = [("astronaut", 21), ("coffee", 8), ("rocket", 5), ("immunohistochemistry", 12)]


def synthetic_case(height: int, width: int, classes: int, image_kind: str, seed: int = 0):
    """(probabilities (K, H, W) float32, image (3, H, W) uint8) for one synthetic case."""
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
    one_hot = F.one_hot(labels, classes).permute(2, 0, 1).float()
    logits = 2.0 * one_hot + 1.5 * torch.randn(classes, height, width, generator=g)
    return torch.softmax(logits, 0), image


def photo_case(name: str, classes: int, seed: int = 0, stride: int = 8):
    """(probabilities (K, H, W), image (3, H, W) uint8): a scikit-image photo and a unary like
    a stride-8 network's (see the module docstring)."""
    import skimage.data
    from skimage.segmentation import slic

    photo = np.ascontiguousarray(getattr(skimage.data, name)()[..., :3])
    h, w, _ = photo.shape
    segments = slic(photo, n_segments=3 * classes, compactness=10, start_label=0)
    rng = np.random.default_rng(seed)
    labels = torch.from_numpy(rng.integers(0, classes, segments.max() + 1)[segments])
    one_hot = F.one_hot(labels.long(), classes).permute(2, 0, 1).float()[None]
    coarse = F.avg_pool2d(one_hot, stride, ceil_mode=True)
    g = torch.Generator().manual_seed(seed)
    logits = 4.0 * coarse + torch.randn(coarse.shape, generator=g)
    logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    return torch.softmax(logits[0], 0).contiguous(), torch.from_numpy(photo).permute(2, 0, 1)


def cases(quick: bool):
    """(name, probabilities, image) of every case; --quick: one small synthetic case."""
    if quick:
        yield "160x120, 21 classes, uniform noise", *synthetic_case(120, 160, 21, "noise")
        return
    for name, h, w, k, kind in [
        ("500x375, 21 classes, uniform noise", 375, 500, 21, "noise"),
        ("500x375, 21 classes, smooth blocks", 375, 500, 21, "smooth"),
        ("1024x512, 19 classes, smooth blocks", 512, 1024, 19, "smooth"),
    ]:
        yield name, *synthetic_case(h, w, k, kind)
    try:
        import skimage  # noqa: F401
    except ImportError:
        print("scikit-image is not installed (pip install -e .[test]): photo cases skipped")
        return
    for photo, k in PHOTOS:
        probabilities, image = photo_case(photo, k)
        _, h, w = image.shape
        yield f"{photo} {w}x{h}, {k} classes", probabilities, image


def seglab_runner(threads: int, warm: bool):
    def run(probabilities: torch.Tensor, image: torch.Tensor, p: DenseCRFParams):
        torch.set_num_threads(threads)
        if not warm:
            _smoothness_kernel.cache_clear()
        return dense_crf_labels(probabilities[None], image[None], preset=p)[0].numpy()

    return run


def backend_name() -> str:
    """What dense_crf runs here: "native kernel" or "PyTorch path"."""
    native_runs = native.chosen(None, torch.device("cpu"), None)
    return "native kernel (seglab/crf/dense_kernel.cpp)" if native_runs else "PyTorch path"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown model"


def timed(fn, *args):
    """(wall seconds, CPU seconds of this process over all threads, result)."""
    start, start_cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return time.perf_counter() - start, time.process_time() - start_cpu, result


def measure(args, params: DenseCRFParams) -> list[list[str]]:
    runners = {
        "pydensecrf": pydensecrf_labels,
        "seglab 2 threads": seglab_runner(2, args.warm),
        "seglab 1 thread": seglab_runner(1, args.warm),
    }
    seglab_runner(2, args.warm)(*synthetic_case(64, 64, 3, "noise"), params)  # first-call costs
    print(f"seglab backend: {backend_name()}", flush=True)
    rows = []
    for name, probabilities, image in cases(args.quick):
        times = {runner: [] for runner in runners}
        labels = {}
        for _ in range(args.repeats):
            for runner, fn in runners.items():
                wall, cpu, labels[runner] = timed(fn, probabilities, image, params)
                times[runner].append((wall, cpu))
        best = {runner: min(times[runner]) for runner in runners}
        reference = labels["pydensecrf"]
        row = [name, f"{best['pydensecrf'][0]:.3f}"]
        for runner in ("seglab 2 threads", "seglab 1 thread"):
            speedup = best["pydensecrf"][0] / best[runner][0]
            row += [f"{best[runner][0]:.3f}", f"{speedup:.2f}x"]
        agreement = [100.0 * float((labels[r] == reference).mean()) for r in runners]
        row.append(" / ".join(f"{a:.2f}%" for a in agreement[1:]))
        row.append(" / ".join(f"{best[runner][1]:.2f}" for runner in runners))
        rows.append(row)
        print("| " + " | ".join(row) + " |", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="pydensecrf", choices=sorted(PRESETS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warm", action="store_true", help="keep the smoothness-lattice cache")
    parser.add_argument("--quick", action="store_true", help="one small case, no file written")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    params = PRESETS[args.preset]
    header = (
        "| case | pydensecrf s | seglab 2 threads s | speed-up | seglab 1 thread s | speed-up "
        "| agreement 2 / 1 thread | CPU s: pydensecrf / 2 threads / 1 thread |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    start_load = os.getloadavg()[0]
    print(header, flush=True)
    rows = measure(args, params)
    end_load = os.getloadavg()[0]
    print(f"load average {start_load:.1f} at start, {end_load:.1f} at end")
    if args.quick or args.no_write:
        return
    table = "\n".join("| " + " | ".join(row) + " |" for row in rows)
    lattices = "smoothness lattice cached per size" if args.warm else "both lattices built"
    command = "benchmarks/crf_benchmark.py" + (" --warm" if args.warm else "")
    write_section(
        HEADING,
        f"""{HEADING}

seglab.crf.dense_crf_labels ({backend_name()}, default settings) against
pydensecrf2 (Kraehenbuehl's C++ densecrf, single-threaded) on the same unary and image, preset
`{args.preset}` ({params}). Times are wall seconds, best of {args.repeats} interleaved runs, with
{lattices} inside every timed call; agreement = share of pixels with pydensecrf's label;
CPU s = process CPU time of the best run. Cases and unaries: see the script's docstring (the
photos are scikit-image's, with stride-8-like unaries). Machine: {os.cpu_count()}-core
{platform.machine()} CPU ({cpu_model()}), torch {torch.__version__},
load average {start_load:.1f} at start and {end_load:.1f} at end. Measured
{time.strftime("%Y-%m-%d")} with

    .venv/bin/python {command} --repeats {args.repeats}

{header}
{table}
""",
    )


if __name__ == "__main__":
    main()
