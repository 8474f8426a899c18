"""The real-time table (issue 14.8): BiSeNet, DFANet and LEDNet against the models a user would
pick instead, on the CPU, side by side in one run with one harness.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/realtime.py --threads 2 --repeats 10
    .venv/bin/python benchmarks/realtime.py --quick   # smoke run: 512x1024, 1 repeat, no file

Harness: seglab.benchmark.benchmark() for every model and size (random N(0, 1) input of batch
1, eval mode, `warmup` passes, then the median of `repeats` timed passes; variants eager,
channels_last, bn_folded and onnxruntime with the same thread count, each checked against
eager by max |logit difference|). All models have random weights and 19 classes (Cityscapes):
speed does not depend on the weights. GFLOPs are seglab.benchmark.count_flops: torch's
FlopCounterMode, **2 FLOPs per multiply-accumulate** of convolutions and matrix products (BN,
activations, pooling and resizing uncounted). Papers that say "FLOPs" for mobile networks
usually count multiply-adds, half of this figure.

Sizes: 512x1024 and 1024x2048 (Cityscapes half and full) for every model, and BiSeNet's
speed protocol, 768x1536 (the authors resize 1024x2048 to it, TorchSeg issue #6), for the
BiSeNets and LR-ASPP, the reference. LR-ASPP (torchvision lraspp_mobilenet_v3_large) is run
first; a model whose eager latency is worse than LR-ASPP's at the same size gets a reason
(the measured share of its eager time spent in grouped / depthwise convolutions, from one
profiled pass, and its FLOPs next to LR-ASPP's) and one attempted fix, timed in the same run:
"fused" = BN folded into the convs *and* channels_last, which lets oneDNN run the depthwise
and grouped convs in NHWC (PyTorch's NCHW CPU path for them is slow), timed by the same
benchmark() on the folded model.

Notes on the reasons (why a "real-time" model can be slow here):
- The papers time a GPU (BiSeNet: Titan XP, 105 FPS at 2048x1024; DFANet: Titan X, 160 FPS;
  LEDNet: GTX 1080Ti, 71 FPS). FLOPs, not memory traffic, dominate there; a 2-core CPU pays
  for memory traffic, which FLOP counts ignore.
- Depthwise / grouped convs (Xception39's and XceptionA's separable convs, MobileNet's)
  have ~1 multiply-add per loaded weight and activation, so they run far below peak; PyTorch's
  NCHW CPU kernels for them are slow (the BiSeNet author: X39 speed in PyTorch "is not
  accurate", TorchSeg #6; DFANet ports: 40-50 ms at 1024x1024 on a GPU, Tramac #33).
- LEDNet has no depthwise conv but dense factorised 3x1/1x3 convs over 128 channels at 1/8
  and 32-64 channels at 1/2-1/4 (its FLOPs are ~10x DFANet's), plus per-block channel split,
  concat and shuffle, each a full copy of the feature map.
- DFANet vs the paper's FLOPs (see FLOPS_NOTE): counted with the same convention the
  difference is small, and it is the convention (FLOPs = 2 x MACs) that makes seglab's figure
  ~2x the paper's.

Writes the table to benchmarks/RESULTS.md under HEADING (the other sections stay); --quick
only prints.
"""

from __future__ import annotations

import argparse
import platform
from collections.abc import Callable
from typing import Any

import torch
from results_file import write_section
from torch import nn
from torch.profiler import ProfilerActivity, profile

from seglab.benchmark import benchmark, fold_batchnorm
from seglab.models import create_model

HEADING = "## Real-time models (CPU)"
VARIANTS = ("eager", "channels_last", "bn_folded", "onnxruntime")
SIZES = ((512, 1024), (768, 1536), (1024, 2048))
SPEED_PROTOCOL = (768, 1536)
REFERENCE = "lraspp_mobilenet_v3_large"
NUM_CLASSES = 19
FLOPS_NOTE = (
    "DFANet's abstract gives 1.7 GFLOPs (70.3 mIoU, 160 FPS) and 3.4 GFLOPs 'on a higher "
    "resolution image'; MODELS_2019.md did not find the sizes. The paper's Table (not in the "
    "shared notes, recalled, to be checked against the PDF) lists DFANet A' at 512x1024 and A "
    "at 1024x1024: twice the pixels, twice the FLOPs, which fits 3.4 = 2 x 1.7. seglab counts "
    "DFANet A at 3.67 GFLOPs at 512x1024 and 7.34 at 1024x1024, i.e. 1.83 and 3.67 G "
    "multiply-adds: the paper's 'FLOPs' are multiply-adds, and the remaining ~8% is within what "
    "the unofficial layer choices (Tramac's; no official code) and uncounted-vs-counted layers "
    "(the FC attention, the decoder's 1x1 convs at 1/4) can account for."
)


def _torchvision(builder: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from torchvision.models import segmentation

        kwargs = {"weights": None, "weights_backbone": None, "num_classes": NUM_CLASSES}
        if builder.startswith("deeplabv3"):
            kwargs["aux_loss"] = False
        return getattr(segmentation, builder)(**kwargs)

    return build


def _seglab(name: str, **options: Any) -> Callable[[], nn.Module]:
    return lambda: create_model(name, NUM_CLASSES, **options)


# label -> builder, in run order: the reference first. Peers first, then the three papers.
MODELS: dict[str, Callable[[], nn.Module]] = {
    REFERENCE: _torchvision("lraspp_mobilenet_v3_large"),
    "deeplabv3_mobilenet_v3_large": _torchvision("deeplabv3_mobilenet_v3_large"),
    "deeplabv3plus mobilenetv2_100 OS16": _seglab(
        "deeplabv3plus", encoder="mobilenetv2_100", output_stride=16
    ),
    "bisenet (Xception39)": _seglab("bisenet"),
    "bisenet_r18": _seglab("bisenet_r18"),
    "bisenet_r101": _seglab("bisenet_r101"),
    "dfanet (A)": _seglab("dfanet"),
    "lednet": _seglab("lednet"),
}


def runs_at(label: str, size: tuple[int, int]) -> bool:
    """768x1536 is BiSeNet's protocol: only the BiSeNets and the reference run it."""
    return size != SPEED_PROTOCOL or label.startswith("bisenet") or label == REFERENCE


def grouped_conv_share(model: nn.Module, size: tuple[int, int]) -> float:
    """Share of one eager forward's CPU time in convolutions with groups > 1 (depthwise
    included): conv events whose weight's in-channels (shape[1]) are fewer than the input's."""
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        model(x)  # warm-up outside the profile
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            model(x)
    grouped = total = 0.0
    for event in prof.events():
        if event.name != "aten::conv2d":
            continue
        total += event.cpu_time_total
        shapes = event.input_shapes
        if len(shapes) > 1 and len(shapes[0]) == 4 and len(shapes[1]) == 4:
            grouped += event.cpu_time_total * (shapes[1][1] < shapes[0][1])
    return grouped / max(total, 1e-9)


def measure(size, label, build, repeats, warmup, reference) -> dict[str, Any]:
    """One table row: benchmark() of every variant, and the reason and fix when slower than
    the reference row (None: this row is the reference)."""
    model = build().eval()
    report = benchmark(model, size, repeats=repeats, warmup=warmup, variants=VARIANTS)
    row: dict[str, Any] = {
        "model": label,
        "size": size,
        "parameters": report["parameters"],
        "gflops": report["gflops"],
        "ms": {},
        "max_abs_diff": 0.0,
        "reason": "",
        "fused_ms": None,
    }
    for variant, result in report["variants"].items():
        if "error" in result:
            row["ms"][variant] = None
            row.setdefault("errors", []).append(f"{variant}: {result['error'][:80]}")
            continue
        row["ms"][variant] = result["latency_ms"]["median"]
        row["max_abs_diff"] = max(row["max_abs_diff"], result["max_abs_diff"])
        if variant == "bn_folded":
            row["bn_note"] = result["note"]
    eager = row["ms"].get("eager")
    reference_ms = None if reference is None else reference["ms"].get("eager")
    if reference_ms is not None and eager is not None and eager > reference_ms:
        share = grouped_conv_share(model, size)
        row["reason"] = (
            f"{100 * share:.0f}% of eager time in grouped/depthwise convs; "
            f"{row['gflops']:.1f} vs {reference['gflops']:.1f} GFLOPs"
        )
        row["grouped_share"] = share
        fused = benchmark(
            fold_batchnorm(model, torch.zeros(1, 3, *size)),
            size,
            repeats=repeats,
            warmup=warmup,
            variants=("channels_last",),
        )["variants"]["channels_last"]
        row["fused_ms"] = fused.get("latency_ms", {}).get("median")
    return row


def run(sizes, labels, repeats: int, warmup: int) -> list[dict[str, Any]]:
    # One untimed pass first: the process's first convolutions pay oneDNN's and the
    # allocator's set-up, which would otherwise land on whichever model runs first (the
    # reference) and make every other model look faster than it (a first --quick run had
    # LR-ASPP eager at 1467 ms and bn_folded at 412 ms).
    with torch.no_grad():
        MODELS[labels[0]]().eval()(torch.randn(1, 3, *sizes[0]))
    rows = []
    for size in sizes:
        reference = None
        for label in labels:
            if not runs_at(label, size):
                continue
            print(f"{label} at {size[0]}x{size[1]} ...", flush=True)
            row = measure(size, label, MODELS[label], repeats, warmup, reference)
            if label == REFERENCE:
                reference = row
            rows.append(row)
    return rows


def _ms(value: float | None) -> str:
    return "failed" if value is None else f"{value:.0f}"


def format_section(rows: list[dict[str, Any]], setup: dict[str, Any]) -> str:
    """The RESULTS.md section: one table per input size, the setup, the FLOPs comparison."""
    lines = [
        HEADING,
        "",
        f"CPU, batch 1, random weights, {NUM_CLASSES} classes; threads: {setup['threads']} for "
        f"PyTorch and onnxruntime alike; median of {setup['repeats']} timed passes after "
        f"{setup['warmup']} warm-up, every model and variant timed by seglab.benchmark."
        f"benchmark in this one run. Machine: {setup['machine']}, torch {setup['torch']}. "
        "GFLOPs per image are seglab.benchmark.count_flops: 2 FLOPs per multiply-accumulate. "
        "images/s = 1000 / the best variant's ms. `fused` = BN folded + channels_last, the fix "
        f"tried for a model slower than {REFERENCE} (eager) at the same size. Command: "
        f"`{setup['command']}`",
    ]
    for size in dict.fromkeys(tuple(row["size"]) for row in rows):
        protocol = " (BiSeNet's speed protocol)" if size == SPEED_PROTOCOL else ""
        lines += [
            "",
            f"### {size[0]}x{size[1]}{protocol}",
            "",
            "| model | params | GFLOPs | eager ms | channels_last ms | bn_folded ms | "
            "onnxruntime ms | best images/s | max abs diff | fused ms | slower than "
            "LR-ASPP because |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for row in (r for r in rows if tuple(r["size"]) == size):
            timed = [v for v in row["ms"].values() if v is not None]
            best = f"{1000 / min(timed):.2f}" if timed else "-"
            fused = "-" if row["fused_ms"] is None else f"{row['fused_ms']:.0f}"
            reason = row["reason"] or "-"
            lines.append(
                f"| {row['model']} | {row['parameters'] / 1e6:.2f} M | {row['gflops']:.1f} | "
                + " | ".join(_ms(row["ms"].get(v)) for v in VARIANTS)
                + f" | {best} | {row['max_abs_diff']:.0e} | {fused} | {reason} |"
            )
    notes = sorted({f"{r['model']}: {r['bn_note']}" for r in rows if r.get("bn_note")})
    errors = [f"{r['model']} {r['size']}: {e}" for r in rows for e in r.get("errors", [])]
    lines += ["", "BN folding: " + "; ".join(notes) + "."] if notes else []
    lines += ["", "Failed variants: " + "; ".join(errors) + "."] if errors else []
    lines += ["", "FLOPs against the papers: " + FLOPS_NOTE]
    lines += [
        "",
        "Why a real-time model can be slower than LR-ASPP on a CPU: see the notes at the top of "
        "benchmarks/realtime.py (GPU-timed papers; depthwise/grouped convs are memory-bound "
        "and slow in PyTorch's NCHW CPU kernels; LEDNet's dense factorised convs and its "
        "split/concat/shuffle copies).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="512x1024, 1 repeat, no file")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated labels")
    args = parser.parse_args()
    labels = [label.strip() for label in args.models.split(",")]
    unknown = [label for label in labels if label not in MODELS]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}; choose from {', '.join(MODELS)}")
    if REFERENCE in labels:  # the reference must run first for the reason column
        labels = [REFERENCE] + [label for label in labels if label != REFERENCE]
    sizes = SIZES[:1] if args.quick else SIZES
    repeats, warmup = (1, 1) if args.quick else (args.repeats, args.warmup)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = run(sizes, labels, repeats, warmup)
    setup = {
        "threads": args.threads,
        "repeats": repeats,
        "warmup": warmup,
        "machine": platform.machine() or "cpu",
        "torch": torch.__version__,
        "command": "python benchmarks/realtime.py "
        + ("--quick " if args.quick else "")
        + f"--threads {args.threads} --repeats {repeats} --warmup {warmup}",
    }
    section = format_section(rows, setup)
    print(section)
    if not args.quick:
        write_section(HEADING, section)


if __name__ == "__main__":
    main()
