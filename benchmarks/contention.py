"""seglab on a busy machine: each task idle, then beside one CPU-bound process, loaded/idle.

Tasks: one training step of the demo (configs/demo_shapes.yaml: its model, batch size and
optimiser, on random 64x64 images), one Segmenter prediction (its default variant) of a
375x500 image, one dense CRF of 21 classes on 375x500. The load is a plain busy loop
(`python3 -c "while True: pass"`) that this script starts and kills. A fair share of two
cores is 2x; the goal is <= 2.5x for each task.

  python benchmarks/contention.py --quick            # a smoke check (few repeats)
  python benchmarks/contention.py --repeats 30       # the measurement, on a quiet machine
  SEGLAB_OMP_DEFAULTS=0 python benchmarks/contention.py --repeats 30   # torch's own default

`import seglab` comes before `import torch` so seglab's OpenMP default applies.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import seglab  # noqa: F401  - first: sets OMP_WAIT_POLICY before torch loads libgomp

# isort: split
import torch

ROOT = Path(__file__).resolve().parents[1]


def training_step():
    from seglab import create_model
    from seglab.config import load_config

    cfg = load_config(ROOT / "configs" / "demo_shapes.yaml", [])
    torch.manual_seed(0)
    model = create_model(cfg.model.name, 4, 3, **cfg.model.options).train()
    optimizer = torch.optim.AdamW(model.parameters(), cfg.optim.lr, weight_decay=1e-4)
    images = torch.randn(cfg.data.batch_size, 3, 64, 64)
    masks = torch.randint(0, 4, (cfg.data.batch_size, 64, 64))

    def step():
        optimizer.zero_grad(set_to_none=True)
        out = model(images)
        logits = out["out"] if isinstance(out, dict) else out
        torch.nn.functional.cross_entropy(logits, masks).backward()
        optimizer.step()

    return step


def prediction():
    import numpy as np

    from seglab import create_model
    from seglab.config import load_config
    from seglab.inference import Segmenter

    cfg = load_config(ROOT / "configs" / "demo_shapes.yaml", [])
    segmenter = Segmenter(create_model(cfg.model.name, 4, 3, **cfg.model.options))
    image = np.random.default_rng(0).integers(0, 256, (375, 500, 3), dtype=np.uint8)
    print(f"  prediction variant: {segmenter.variant}", flush=True)
    return lambda: segmenter.predict(image)


def dense_crf():
    from seglab.crf import dense_crf as crf

    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(1, 21, 47, 63, generator=generator)  # stride-8 unaries, upsampled
    probs = torch.nn.functional.interpolate(scores * 3, (375, 500), mode="bilinear").softmax(1)
    image = torch.randint(0, 256, (1, 3, 375, 500), dtype=torch.uint8, generator=generator)
    return lambda: crf(probs, image)


TASKS = {"training step": training_step, "prediction": prediction, "dense CRF": dense_crf}


def median_seconds(run, repeats: int, warmup: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per task and state")
    parser.add_argument("--quick", action="store_true", help="3 repeats, 1 warm-up: a smoke check")
    args = parser.parse_args()
    repeats, warmup = (3, 1) if args.quick else (args.repeats, 3)
    cores = len(os.sched_getaffinity(0))
    print(
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')} "
        f"GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', '(unset)')} "
        f"torch threads {torch.get_num_threads()}, {cores} cores available, "
        f"load average {os.getloadavg()[0]:.2f} (should be ~0 on a quiet machine)",
        flush=True,
    )
    rows = []
    for name, build in TASKS.items():
        run = build()
        idle = median_seconds(run, repeats, warmup)
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(0.5)  # let the scheduler see it
            loaded = median_seconds(run, repeats, warmup)
        finally:
            busy.kill()
            busy.wait()
        rows.append((name, idle, loaded))
        print(f"  {name}: idle {1e3 * idle:.1f} ms, loaded {1e3 * loaded:.1f} ms", flush=True)
    print(f"\n| task | idle ms | loaded ms | loaded/idle (goal <= 2.5) |  [{repeats} repeats]")
    print("|---|---:|---:|---:|")
    for name, idle, loaded in rows:
        print(f"| {name} | {1e3 * idle:.1f} | {1e3 * loaded:.1f} | {loaded / idle:.2f} |")


if __name__ == "__main__":
    main()
