"""CPU latency of seglab's torchvision-equivalent models next to torchvision's, in one run.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/torchvision_latency.py [--repeats 7] [--size 512]

Same harness for all: batch 1, eval mode, torch.set_num_threads(2), warm-up forwards, then
`repeats` rounds that time every model once each, interleaved (in alternating order), so that
load from other processes on a shared CPU hits all models alike; the median per model and the
median of the per-round ratios to torchvision eager are reported. Per architecture:
torchvision eager (no_grad; the reference), seglab's model eager (no_grad), and seglab's
default, what Segmenter, `seglab eval` and `seglab predict` run: prepare_for_inference(model,
"cpu") (BN folded, channels_last where CHANNELS_LAST_CPU says so) called under
torch.inference_mode. seglab's models hold torchvision's weights (load_torchvision_checkpoint),
so the outputs are compared too: max |logit| difference and the share of pixels whose label
equals torchvision's. Writes the table to benchmarks/RESULTS.md under "## torchvision-equivalent
latency", keeping the file's other sections.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
from results_file import write_section
from torchvision.models import segmentation

from seglab.fast_inference import prepare_for_inference
from seglab.models.torchvision_convert import load_torchvision_checkpoint

HEADING = "## torchvision-equivalent latency"
PAIRS = {  # torchvision builder -> seglab model name (for the table)
    "deeplabv3_resnet50": "deeplabv3_torchvision (encoder=resnet50)",
    "fcn_resnet50": "fcn_resnet (encoder=resnet50)",
}


def time_forward(model, x: torch.Tensor, inference_mode: bool) -> float:
    """Seconds of one forward: no_grad for the eager models, inference_mode for the default
    (what Segmenter runs it under)."""
    context = torch.inference_mode() if inference_mode else torch.no_grad()
    with context:
        start = time.perf_counter()
        model(x)
        return time.perf_counter() - start


def _logits(out) -> torch.Tensor:
    return out["out"] if isinstance(out, dict) else out


def build(size: int) -> tuple[dict, dict, dict, torch.Tensor]:
    """(name -> model, name -> uses inference_mode, architecture -> {variant description,
    max diff, label agreement per seglab model}, the input)."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, size, size)
    models: dict[str, object] = {}
    inference: dict[str, bool] = {}
    checks: dict[str, dict] = {}
    for tv_name in PAIRS:
        reference = getattr(segmentation, tv_name)(
            weights=None, weights_backbone=None, num_classes=21
        ).eval()
        model = load_torchvision_checkpoint(reference.state_dict()).eval()
        default, described = prepare_for_inference(model, "cpu")
        del model  # as in Segmenter: the prepared copy is the one kept
        eager_model = load_torchvision_checkpoint(reference.state_dict()).eval()
        with torch.no_grad():
            expected = reference(x)["out"]
        checks[tv_name] = {"variant": described}
        for label, candidate, mode in (("eager", eager_model, False), ("default", default, True)):
            with torch.inference_mode() if mode else torch.no_grad():
                got = _logits(candidate(x))
            agree = (got.argmax(1) == expected.argmax(1)).float().mean().item()
            checks[tv_name][label] = ((got - expected).abs().max().item(), agree)
            models[f"seglab {label} {tv_name}"] = candidate
            inference[f"seglab {label} {tv_name}"] = mode
        models[f"torchvision {tv_name}"] = reference
        inference[f"torchvision {tv_name}"] = False
    return models, inference, checks, x


def run(repeats: int, warmup: int, size: int) -> tuple[list[dict], dict]:
    torch.set_num_threads(2)
    models, inference, checks, x = build(size)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(warmup):
        for name, model in models.items():
            time_forward(model, x, inference[name])
    for round_ in range(repeats):
        # alternate the order, so that running second (warm caches or not) favours no side
        order = list(models) if round_ % 2 == 0 else list(models)[::-1]
        for name in order:
            times[name].append(time_forward(models[name], x, inference[name]))
        print(
            f"round {round_ + 1}/{repeats}: "
            + ", ".join(f"{n} {t[-1] * 1000:.0f} ms" for n, t in times.items()),
            flush=True,
        )
    rows = []
    for tv_name, seglab_name in PAIRS.items():
        reference_times = times[f"torchvision {tv_name}"]
        row = {
            "architecture": tv_name,
            "seglab_name": seglab_name,
            "torchvision_ms": 1000 * statistics.median(reference_times),
            "variant": checks[tv_name]["variant"],
        }
        for label in ("eager", "default"):
            ours = times[f"seglab {label} {tv_name}"]
            # the ratio within each round cancels load that lasts longer than one round
            ratios = [a / b for a, b in zip(ours, reference_times, strict=True)]
            row[f"{label}_ms"] = 1000 * statistics.median(ours)
            row[f"{label}_ratio"] = statistics.median(ratios)
            row[f"{label}_ratio_worst"] = max(ratios)
            row[f"{label}_diff"], row[f"{label}_agree"] = checks[tv_name][label]
        rows.append(row)
    return rows, times


def format_section(rows: list[dict], repeats: int, warmup: int, size: int) -> str:
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    lines = [
        HEADING,
        "",
        f"CPU forward latency, batch 1, {size}x{size}, eval mode, 2 threads; median of "
        f"{repeats} interleaved rounds after {warmup} warm-up rounds; all sides hold the same "
        f"weights (random init, 21 classes). torchvision and seglab eager run under no_grad; "
        f"seglab default is prepare_for_inference(model, 'cpu') under inference_mode, what "
        f"Segmenter, `seglab eval` and `seglab predict` run. Machine: "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__}, load average {load} at the end; the ratio is the median of the "
        f"per-round ratios to torchvision eager (worst round in brackets). Command: "
        f"`OMP_NUM_THREADS=2 .venv/bin/python benchmarks/torchvision_latency.py --repeats "
        f"{repeats}`.",
        "",
        "| architecture | torchvision eager (ms) | seglab eager (ms) | seglab eager / tv "
        "| seglab default (ms) | seglab default / tv | default: max abs logit diff, labels "
        "equal to tv |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['architecture']} | {row['torchvision_ms']:.0f} | {row['eager_ms']:.0f} | "
            f"{row['eager_ratio']:.3f} ({row['eager_ratio_worst']:.3f}) | "
            f"{row['default_ms']:.0f} | **{row['default_ratio']:.3f}** "
            f"({row['default_ratio_worst']:.3f}) | {row['default_diff']:.1e}, "
            f"{100 * row['default_agree']:.2f} % |"
        )
    lines += [""] + [f"seglab default for {row['seglab_name']}: {row['variant']}." for row in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    rows, _ = run(args.repeats, args.warmup, args.size)
    section = format_section(rows, args.repeats, args.warmup, args.size)
    print(section)
    write_section(HEADING, section)


if __name__ == "__main__":
    main()
