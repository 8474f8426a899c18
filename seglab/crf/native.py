"""The optional compiled dense-CRF kernel: dense_kernel.cpp, built on first use, run by ctypes.

A design change from DESIGN.md's "nothing that needs compiled custom ops" (decided by the lead
for issue 19.4): seglab still needs none. When a C++ compiler is on the machine, dense_crf
compiles dense_kernel.cpp once (plain C++20 and the standard library, no torch headers) into
a per-user cache, SEGLAB_CACHE_DIR or $XDG_CACHE_HOME/seglab or ~/.cache/seglab, under a name
that hashes the source, the compiler and the CPU (it is built with -march=native for the
machine it runs on), and calls it through ctypes. When there is no compiler, or the build or
the load fails, dense_crf runs the pure-PyTorch path (dense.py) and says so in one line.
SEGLAB_CRF_BACKEND=torch (or dense_crf(backend="torch")) forces the PyTorch path.

The kernel computes what dense.py computes (the same lattice, base-2 energies and unary) and
is checked against it and against pydensecrf in tests/test_crf_native.py. Building it takes
~7 s on a 2-core machine (three fixed class widths plus a generic one); it keeps up to 256 MB
of freed buffers for the next call; SEGLAB_CRF_PROFILE=1 prints the time of its phases.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor

from seglab.errors import SeglabError

__all__ = ["BACKENDS", "available", "backend_choice", "chosen", "load", "run"]

SOURCE = Path(__file__).with_name("dense_kernel.cpp")
BACKENDS = ("auto", "native", "torch")
BACKEND_ENV = "SEGLAB_CRF_BACKEND"
INTERFACE_VERSION = 2
FLAGS = ["-O3", "-std=c++20", "-shared", "-fPIC", "-pthread"]
# Tried first: the kernel is compiled on the machine that runs it, so it may use all its
# vector instructions; without it (a compiler that rejects it) the build is portable.
ARCH_FLAGS = ["-march=native"]
MAX_CLASSES = 512  # dense_kernel.cpp's MAX_KP
ERRORS = {
    1: "out of memory",
    2: "the features span too large a lattice (scale them down)",
    3: "too many classes for the native kernel (at most 512)",
    4: "an internal error",
}

# The one loaded library (None until tried; False when it could not be had this process).
_library: ctypes.CDLL | bool | None = None


def notice(text: str) -> None:
    print(f"seglab dense_crf: {text}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """Where compiled kernels are kept: SEGLAB_CACHE_DIR, else $XDG_CACHE_HOME/seglab, else
    ~/.cache/seglab."""
    if os.environ.get("SEGLAB_CACHE_DIR"):
        return Path(os.environ["SEGLAB_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "seglab"


def compiler() -> str | None:
    """The C++ compiler: $CXX, else c++, g++ or clang++ on the PATH; None when there is none."""
    wanted = os.environ.get("CXX")
    if wanted:
        return shutil.which(wanted)
    for name in ("c++", "g++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _cpu_identity() -> str:
    """What -march=native depends on: the CPU's model and flags (Linux), else the platform."""
    try:
        with open("/proc/cpuinfo") as info:
            lines = [line for line in info if line.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _library_path(cxx: str) -> Path:
    version = subprocess.run(
        [cxx, "--version"], capture_output=True, text=True, timeout=60
    ).stdout.splitlines()[:1]
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), cxx.encode(), *[v.encode() for v in version]):
        key.update(part)
    key.update(" ".join(FLAGS + ARCH_FLAGS).encode() + _cpu_identity().encode())
    return cache_dir() / f"dense_crf_{key.hexdigest()[:16]}.so"


def _compile(cxx: str, target: Path, source: Path = SOURCE) -> str | None:
    """Build the library from source (the kernel's, or another build of it, as
    benchmarks/crf_ab.py compares) into target (atomically: a temporary file, then a rename).
    Returns None on success, else the compiler's first error line."""
    target.parent.mkdir(parents=True, exist_ok=True)
    notice(f"compiling the native kernel once (~10 s) into {target}")
    start = time.perf_counter()
    error = "the compiler failed"
    for arch in (ARCH_FLAGS, []):
        with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so", delete=False) as temp:
            temporary = Path(temp.name)
        try:
            command = [cxx, *FLAGS, *arch, str(source), "-o", str(temporary)]
            done = subprocess.run(command, capture_output=True, text=True, timeout=600)
            if done.returncode == 0:
                os.replace(temporary, target)
                notice(f"compiled in {time.perf_counter() - start:.1f} s")
                return None
            lines = [line for line in done.stderr.splitlines() if "error" in line]
            error = (lines or done.stderr.splitlines() or [error])[0].strip()
        finally:
            temporary.unlink(missing_ok=True)
    return error


def load() -> ctypes.CDLL | None:
    """The compiled kernel, built on first use; None (after one notice) when it cannot be."""
    global _library
    if _library is None:
        _library = _load() or False
    return _library or None


def _load() -> ctypes.CDLL | None:
    cxx = compiler()
    if cxx is None:
        notice("no C++ compiler found (set CXX to one); using the PyTorch path")
        return None
    try:
        target = _library_path(cxx)
        if not target.exists():
            error = _compile(cxx, target)
            if error is not None:
                notice(f"the native kernel did not build ({error}); using the PyTorch path")
                return None
        library = ctypes.CDLL(str(target))
        if library.seglab_dense_crf_version() != INTERFACE_VERSION:
            raise OSError(f"{target} is not interface version {INTERFACE_VERSION}")
    except (OSError, subprocess.SubprocessError) as error:
        notice(f"the native kernel could not be loaded ({error}); using the PyTorch path")
        return None
    return _bind(library)


def _bind(library: ctypes.CDLL) -> ctypes.CDLL:
    """The library with its function's C signature declared."""
    library.seglab_dense_crf.restype = ctypes.c_int
    library.seglab_dense_crf.argtypes = [
        ctypes.c_void_p,  # scores (K, N) float32
        ctypes.c_int,  # logits
        ctypes.c_void_p,  # image (3, H, W) uint8
        ctypes.c_int,  # height
        ctypes.c_int,  # width
        ctypes.c_int,  # classes
        ctypes.POINTER(ctypes.c_double),  # w1, theta_alpha, theta_beta, w2, theta_gamma
        ctypes.c_int,  # iterations
        ctypes.c_void_p,  # compatibility (K, K) float32 or null
        ctypes.c_void_p,  # out (N, K) float32 or null
        ctypes.c_void_p,  # labels (N) int64 or null
        ctypes.c_int,  # threads
    ]
    return library


def backend_choice(backend: str | None) -> str:
    """The backend asked for: the argument, else SEGLAB_CRF_BACKEND, else "auto"."""
    chosen = backend or os.environ.get(BACKEND_ENV) or "auto"
    if chosen not in BACKENDS:
        raise SeglabError(
            f"unknown dense CRF backend {chosen!r} (argument or {BACKEND_ENV}); "
            f"choose one of: {', '.join(BACKENDS)}"
        )
    return chosen


def available() -> bool:
    """Whether the compiled kernel can run here (compiling it if needed)."""
    return load() is not None


def chosen(backend: str | None, device: torch.device, vertex_dtype, classes: int = 1) -> bool:
    """Whether dense_crf runs the compiled kernel for this backend argument (see dense_crf)."""
    choice = backend_choice(backend)
    if choice == "torch":
        return False
    if device.type != "cpu" or vertex_dtype == torch.float16 or classes > MAX_CLASSES:
        if choice == "native":
            raise SeglabError(
                f"the native dense CRF kernel runs on CPU tensors in float32 with at most "
                f"{MAX_CLASSES} classes; use backend='torch'"
            )
        return False
    if choice == "native" and not available():
        raise SeglabError(
            "the native dense CRF kernel could not be built (see the line above); "
            "install a C++ compiler or use backend='torch'"
        )
    return available()


def run(
    scores: Tensor,
    logits: bool,
    image: Tensor,
    params: tuple[float, float, float, float, float],
    iterations: int,
    compatibility: Tensor | None,
    out: Tensor | None,
    threads: int,
    labels: Tensor | None = None,
) -> None:
    """Q (N, K) into out (contiguous float32) and/or each pixel's most probable class into
    labels (contiguous int64 (N,); the first of equal ones, as argmax) for one image's scores
    (K, H, W) and its (3, H, W) uint8 pixels, on CPU tensors; params = (w1, theta_alpha,
    theta_beta, w2, theta_gamma); compatibility (K, K) base-2 cost or None (Potts)."""
    library = load()
    if library is None:
        raise SeglabError("the native dense CRF kernel is unavailable; use backend='torch'")
    k, h, w = scores.shape
    scores = scores.float().contiguous()
    image = image.contiguous()
    if compatibility is not None:
        compatibility = compatibility.float().contiguous()
    if out is not None and (not out.is_contiguous() or out.dtype != torch.float32):
        raise ValueError("out must be contiguous float32")
    if labels is not None and (not labels.is_contiguous() or labels.dtype != torch.int64):
        raise ValueError("labels must be contiguous int64")
    numbers = (ctypes.c_double * 5)(*params)
    status = library.seglab_dense_crf(
        scores.data_ptr(),
        int(logits),
        image.data_ptr(),
        h,
        w,
        k,
        numbers,
        iterations,
        None if compatibility is None else compatibility.data_ptr(),
        None if out is None else out.data_ptr(),
        None if labels is None else labels.data_ptr(),
        max(1, threads),
    )
    if status != 0:
        raise SeglabError(f"the native dense CRF failed: {ERRORS.get(status, status)}")
