"""Load test of `seglab serve`: N requests from C concurrent clients against a real server.

    .venv/bin/python benchmarks/serve_load.py [--requests 200] [--clients 8] [--size 256x256]

Saves a small model (a U-Net, width 8, depth 3, 4 classes, random weights) to a temporary
directory, starts `python -m seglab serve` on it as its own process on 127.0.0.1 (a free
port, --device cpu), and sends every request as raw PNG bytes to /predict?format=labels from
`clients` threads, each request timed from send to the last byte read. Images alternate between
two sizes (the given one and one with a quarter fewer rows), so the server's batcher forms two
groups. Every answer is checked: status 200 and the label PNG equal to Segmenter.predict on the
same image in this process (the same weights, the same default variant). The server's /health
counters give the forward passes it ran. Writes benchmarks/RESULTS.md's "## seglab serve load
test" section; exits with status 1 if a request was lost, refused or answered wrongly.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from results_file import write_section

from seglab.data.folder import ClassInfo
from seglab.inference import Segmenter
from seglab.models import create_model
from seglab.weights import save_weights

HEADING = "## seglab serve load test"
CLASSES = ClassInfo(
    ["sky", "road", "tree", "car"], [(70, 130, 180), (128, 64, 128), (0, 128, 0), (0, 0, 142)]
)
MODEL = {"name": "unet", "width": 8, "depth": 3, "padding": "same"}


def smooth_image(h: int, w: int, seed: int) -> np.ndarray:
    """(H, W, 3) uint8: random blocks upsampled, so the model predicts several classes."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((w, h), Image.BILINEAR))


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call(url: str, body: bytes | None = None, timeout: float = 120) -> tuple[int, bytes]:
    """(status, body); an HTTP error status is returned, a lost connection raises."""
    request = urllib.request.Request(url, data=body, method="POST" if body else "GET")
    if body:
        request.add_header("Content-Type", "application/octet-stream")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def start_server(weights: Path, port: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "seglab", "serve", str(weights), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--device", "cpu"]
    with log.open("w") as out:  # the child keeps its own copy of the descriptor
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"seglab serve exited at start-up:\n{log.read_text()}")
        try:
            if call(f"http://127.0.0.1:{port}/health", timeout=2)[0] == 200:
                return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit(f"seglab serve did not answer /health within 120 s:\n{log.read_text()}")


def load(base: str, bodies: list[bytes], expected: list[np.ndarray], requests: int, clients: int):
    """Each request: (index, status, labels correct, seconds, error or None)."""

    def one(i: int):
        start = time.perf_counter()
        try:
            status, body = call(f"{base}/predict?format=labels", bodies[i % len(bodies)])
        except OSError as error:  # a lost or refused connection: the request is lost
            return i, None, False, time.perf_counter() - start, str(error)
        seconds = time.perf_counter() - start
        correct = status == 200 and np.array_equal(
            np.array(Image.open(io.BytesIO(body))), expected[i % len(bodies)]
        )
        return i, status, correct, seconds, None if status == 200 else body[:200].decode()

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        return list(pool.map(one, range(requests)))


def percentile(sorted_values: list[float], q: float) -> float:
    """The nearest-rank percentile: the smallest value with at least q of the values <= it."""
    rank = max(1, int(np.ceil(q * len(sorted_values))))
    return sorted_values[rank - 1]


def run(requests: int, clients: int, size: tuple[int, int]) -> dict:
    h, w = size
    images = [smooth_image(h, w, seed=10), smooth_image(h - h // 4, w, seed=11)]
    bodies = [png_bytes(image) for image in images]
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        options = {k: v for k, v in MODEL.items() if k != "name"}
        model = create_model(MODEL["name"], num_classes=4, in_channels=3, **options)
        weights = save_weights(model, Path(tmp) / "unet.safetensors", classes=CLASSES)
        segmenter = Segmenter.from_checkpoint(weights, device="cpu")
        expected = [segmenter.predict(image) for image in images]
        port = free_port()
        log = Path(tmp) / "serve.log"
        server = start_server(weights, port, log)
        base = f"http://127.0.0.1:{port}"
        try:
            before = json.loads(call(f"{base}/health")[1])
            variant = json.loads(call(f"{base}/model")[1]).get("variant", "?")
            start = time.perf_counter()
            results = load(base, bodies, expected, requests, clients)
            wall = time.perf_counter() - start
            after = json.loads(call(f"{base}/health")[1])
        finally:
            server.terminate()
            server.wait(timeout=30)
    answered = [r for r in results if r[1] is not None]
    latencies = sorted(1000 * r[3] for r in answered)
    errors = sorted({r[4] for r in results if r[4]})
    return {
        "requests": requests,
        "clients": clients,
        "sizes": [f"{image.shape[0]}x{image.shape[1]}" for image in images],
        "answered": len(answered),
        "ok": sum(r[1] == 200 for r in results),
        "correct": sum(r[2] for r in results),
        "lost": requests - len(answered),
        "indices_complete": sorted(r[0] for r in results) == list(range(requests)),
        "p50_ms": statistics.median(latencies) if latencies else float("nan"),
        "p95_ms": percentile(latencies, 0.95) if latencies else float("nan"),
        "max_ms": latencies[-1] if latencies else float("nan"),
        "wall_s": wall,
        "batches": after["batches"] - before["batches"],
        "images": after["images"] - before["images"],
        "largest_batch": after["largest_batch"],
        "variant": variant,
        "errors": errors[:3],
    }


def format_section(result: dict, command: str) -> str:
    load_avg = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    r = result
    lines = [
        HEADING,
        "",
        f"`seglab serve` started as its own process on 127.0.0.1 (--device cpu, default batching) "
        f"with a small model ({MODEL['name']}, width {MODEL['width']}, depth {MODEL['depth']}, "
        f"4 classes, random weights; inference: {r['variant']}); {r['requests']} POST "
        f"/predict?format=labels requests of PNG bytes from {r['clients']} concurrent clients, "
        f"images alternating {' and '.join(r['sizes'])}; each answer compared with "
        f"Segmenter.predict on the same image. Latency: send to last byte, per request. "
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, load average {load_avg} at the "
        f"end, torch {torch.__version__}. Command: `{command}`.",
        "",
        "| requests | answered 200 | labels equal Segmenter's | lost | p50 ms | p95 ms | max ms "
        "| requests/s | forward passes | largest batch |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {r['requests']} | {r['ok']} | {r['correct']} | {r['lost']} | {r['p50_ms']:.1f} | "
        f"{r['p95_ms']:.1f} | {r['max_ms']:.1f} | {r['requests'] / r['wall_s']:.1f} | "
        f"{r['batches']} | {r['largest_batch']} |",
    ]
    if r["errors"]:
        lines += ["", "Errors: " + "; ".join(r["errors"])]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--size", default="256x256", help="HxW of the larger test image")
    parser.add_argument("--no-write", action="store_true", help="print, leave RESULTS.md alone")
    args = parser.parse_args()
    h, w = (int(v) for v in args.size.lower().split("x"))
    result = run(args.requests, args.clients, (h, w))
    threads = os.environ.get("OMP_NUM_THREADS")
    command = f"{'OMP_NUM_THREADS=' + threads + ' ' if threads else ''}.venv/bin/python "
    command += "benchmarks/serve_load.py" + "".join(
        f" --{k} {v}"
        for k, v in (("requests", args.requests), ("clients", args.clients), ("size", args.size))
        if str(v) != str(parser.get_default(k))
    )
    section = format_section(result, command)
    print(section)
    if not args.no_write:
        write_section(HEADING, section)
    good = result["correct"] == result["ok"] == result["requests"] and result["indices_complete"]
    sys.exit(0 if good else 1)


if __name__ == "__main__":
    main()
