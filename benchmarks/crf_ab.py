"""Two builds of the dense-CRF kernel, timed alternately in one process on the same inputs.

    .venv/bin/python benchmarks/crf_ab.py BEFORE.cpp AFTER.cpp [--cases noise coffee ...]
        [--threads 2] [--repeats 9]

How every change to seglab/crf/dense_kernel.cpp was measured: on a shared machine the host's
load moves a call's time by 1.5x within minutes, far more than most changes, so one build's
run now against another's run later says little. Here each source is compiled as native.py
compiles it (into a temporary folder), both libraries are loaded, and each repeat calls A then
B (B then A on odd repeats) on the same inputs, so a slow moment slows both. Printed per case:
the best and median time of each (the first call of each is dropped: it pays for page faults)
and B/A of the best and the median of the per-repeat ratios, and how far B's output is from
A's (share of equal labels, largest difference of Q) as a check that the change computes the
same thing. `git show HEAD:seglab/crf/dense_kernel.cpp > /tmp/before.cpp` gives a BEFORE.

Cases (crf_benchmark.py's inputs): noise (500x375 uniform colour noise, 21 classes), smooth
(500x375 blocks, 21 classes), and the scikit-image photos by name, optionally with a class
count (coffee:12). Prefix SEGLAB_CRF_PROFILE=wall to print each call's phases.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as crf_benchmark.py: see there

import argparse  # noqa: E402
import ctypes
import sys
import tempfile
import time
from dataclasses import astuple
from pathlib import Path

import numpy as np
import torch
from crf_benchmark import PHOTOS, photo_case, synthetic_case  # benchmarks/ is on sys.path

from seglab.crf import PRESETS, native


def build(source: Path, folder: Path) -> ctypes.CDLL:
    """source compiled as native.py compiles the kernel and loaded, its C signature declared."""
    cxx = native.compiler()
    if cxx is None:
        sys.exit("no C++ compiler found (set CXX to one)")
    target = folder / f"{source.stem}_{abs(hash(str(source)))}.so"
    error = native._compile(cxx, target, source)
    if error is not None:
        sys.exit(f"{source}: the build failed: {error}")
    library = native._bind(ctypes.CDLL(str(target)))
    if library.seglab_dense_crf_version() != native.INTERFACE_VERSION:
        sys.exit(
            f"{source}: interface version {library.seglab_dense_crf_version()}, not "
            f"{native.INTERFACE_VERSION}: compare builds of the same interface"
        )
    return library


def case(name: str):
    """(probabilities (K, H, W) float32, image (3, H, W) uint8) numpy arrays of one case."""
    if name in ("noise", "smooth"):
        probabilities, image = synthetic_case(375, 500, 21, name)
    else:
        photo, _, classes = name.partition(":")
        known = dict(PHOTOS)
        if photo not in known:
            sys.exit(f"unknown case {name!r}: noise, smooth or one of {', '.join(known)}")
        probabilities, image = photo_case(photo, int(classes) if classes else known[photo])
    return np.ascontiguousarray(probabilities.numpy()), np.ascontiguousarray(image.numpy())


def call(library: ctypes.CDLL, probabilities, image, out, threads: int) -> float:
    """Seconds of one call of the kernel on the pydensecrf preset."""
    params = PRESETS["pydensecrf"]
    numbers = (ctypes.c_double * 5)(*astuple(params)[:5])
    k, h, w = probabilities.shape
    start = time.perf_counter()
    status = library.seglab_dense_crf(
        probabilities.ctypes.data, 0, image.ctypes.data, h, w, k, numbers,
        params.iterations, None, out.ctypes.data, None, threads,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    if status != 0:
        sys.exit(f"the kernel failed with status {status}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="kernel source A")
    parser.add_argument("after", type=Path, help="kernel source B")
    parser.add_argument(
        "--cases", nargs="+", default=["noise", "smooth", *(photo for photo, _ in PHOTOS)]
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(1)  # nothing of torch's runs between the calls
    with tempfile.TemporaryDirectory() as folder:
        libraries = [build(source, Path(folder)) for source in (args.before, args.after)]
    for name in args.cases:
        probabilities, image = case(name)
        k, h, w = probabilities.shape
        outs = [np.empty((h * w, k), np.float32) for _ in libraries]
        times = [[], []]
        for repeat in range(args.repeats + 1):
            order = (0, 1) if repeat % 2 == 0 else (1, 0)
            for i in order:
                times[i].append(call(libraries[i], probabilities, image, outs[i], args.threads))
        a, b = (np.array(t[1:]) * 1000 for t in times)
        same = 100 * float((outs[0].argmax(1) == outs[1].argmax(1)).mean())
        print(
            f"{name:24s} A best {a.min():7.1f} ms, median {np.median(a):7.1f} | "
            f"B best {b.min():7.1f}, median {np.median(b):7.1f} | B/A best {b.min() / a.min():.3f},"
            f" median {np.median(b / a):.3f} | labels equal {same:.3f} %, "
            f"max |dQ| {np.abs(outs[0] - outs[1]).max():.1e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
