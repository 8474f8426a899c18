"""Inference speed, compute and memory of a model, with deployment variants side by side.

Conventions, stated once:
- GFLOPs: torch.utils.flop_counter.FlopCounterMode on one image, i.e. 2 FLOPs per
  multiply-accumulate of convolutions (transposed ones included) and matrix products. Batch
  norm, activations, pooling and resizing are not counted (they are < 1% for these models).
- Latency: wall-clock time of one forward pass of the whole batch, after `warmup` passes,
  over `repeats` passes (CUDA synchronised); median with p10/p90 and the interquartile range.
- Peak memory: on CUDA torch.cuda.max_memory_allocated during the timed passes (tensors only,
  not the caching allocator's reserve). On the CPU there is no allocator counter, so it is the
  growth of the process's peak resident set (getrusage ru_maxrss) while the variant ran: a
  lower bound, 0 when an earlier variant already reached a higher peak; the absolute peak RSS
  of the process is reported beside it.
- max_abs_diff: largest |variant - eager| logit on the benchmark input, to show that a
  variant computes the same function.
"""

from __future__ import annotations

import copy
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from seglab.device import resolve_device
from seglab.errors import SeglabError
from seglab.models import main_logits
from seglab.nn.fold_batchnorm import count_batchnorms, fold_batchnorm, input_channels
from seglab.onnx_graph import fixed_shape_graph, ort_session

VARIANTS = ("eager", "channels_last", "bn_folded", "compile", "onnxruntime")
Size = tuple[int, int]


def count_flops(model: nn.Module, size: Size = (512, 512), batch: int = 1) -> int:
    """FLOPs (2 per multiply-accumulate, as FlopCounterMode counts) of one eval forward pass.

    The pass runs on a copy of the model on the meta device: shapes only, no arithmetic, so
    a ResNet-101 DeepLab at 512x512 is counted in about a second.
    """
    shape = (batch, input_channels(model), *size)
    try:
        meta_model = copy.deepcopy(model).to("meta").eval()
        inputs = torch.empty(shape, device="meta")
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            meta_model(inputs)
        return counter.get_total_flops()
    except (NotImplementedError, RuntimeError):  # an op without a meta kernel: count for real
        device = next(model.parameters()).device
        counter = FlopCounterMode(display=False)
        was_training = model.training
        model.eval()
        try:
            with counter, torch.no_grad():
                model(torch.zeros(shape, device=device))
        finally:
            model.train(was_training)
        return counter.get_total_flops()


def model_gflops(name: str, size: Size = (512, 512), **options: Any) -> float:
    """GFLOPs of a registered model per (C, H, W) image; options default to the paper's
    configuration, input channels included (e.g. for a `seglab models --table` column).
    Built on the meta device: no memory for weights, about a second for a ResNet-101."""
    from seglab.models import create_model, model_info

    info = model_info(name)
    kwargs = {"num_classes": 21, **info.paper_options, **options}
    with torch.device("meta"):
        model = create_model(name, **kwargs)
    return count_flops(model, size) / 1e9


def _onnx_runner(model: nn.Module, inputs: torch.Tensor) -> Callable[[], torch.Tensor]:
    """An onnxruntime session for this exact input shape (fixed shapes: nothing dynamic)."""
    graph, errors = fixed_shape_graph(model, inputs)
    if graph is None:
        raise RuntimeError(f"ONNX export failed ({'; '.join(errors)})")
    # the same threads as PyTorch, so the comparison is between runtimes, not thread counts
    session = ort_session(graph, threads=torch.get_num_threads(), cuda=inputs.is_cuda)
    feed = {"image": inputs.cpu().numpy()}
    return lambda: torch.from_numpy(session.run(None, feed)[0])


def _prepare(variant: str, model: nn.Module, inputs: torch.Tensor):
    """(callable running one forward pass, note) for a variant."""
    if variant == "eager":
        return lambda: main_logits(model(inputs)), ""
    if variant == "channels_last":
        converted = copy.deepcopy(model).to(memory_format=torch.channels_last)
        x = inputs.contiguous(memory_format=torch.channels_last)
        return lambda: main_logits(converted(x)), ""
    if variant == "bn_folded":
        folded = fold_batchnorm(model, inputs[:1])
        before = eval_path_batchnorms(model, inputs[:1])
        after = eval_path_batchnorms(folded, inputs[:1])
        unused = count_batchnorms(model) - before
        note = f"{before - after} of {before} BN folded"
        if unused:  # e.g. BiSeNet's auxiliary heads, which only a training forward runs
            note += f" ({unused} more not on the eval path)"
        return lambda: main_logits(folded(inputs)), note
    if variant == "compile":
        compiled = torch.compile(copy.deepcopy(model))
        return lambda: main_logits(compiled(inputs)), "first call (compilation) is in warm-up"
    if variant == "onnxruntime":
        run = _onnx_runner(model, inputs)
        return run, "onnxruntime CPUExecutionProvider, fixed input shape"
    raise SeglabError(f"unknown benchmark variant {variant!r}; choose from {', '.join(VARIANTS)}")


def eval_path_batchnorms(model: nn.Module, example: torch.Tensor) -> int:
    """BatchNorm layers that still normalise (count_batchnorms) and run in an eval forward
    of `example`: the ones whose folding changes inference speed."""
    ran: set[nn.Module] = set()
    hooks = [
        m.register_forward_hook(lambda module, *_: ran.add(module))
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and count_batchnorms(m) == 1
    ]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return len(ran)


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile, q in [0, 1]."""
    position = q * (len(sorted_values) - 1)
    low = int(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def _peak_rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux and in bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _time_variant(
    run: Callable[[], torch.Tensor],
    device: torch.device,
    repeats: int,
    warmup: int,
    batch: int,
    reference: torch.Tensor | None,
) -> tuple[dict[str, Any], torch.Tensor]:
    """Time `run` (see the module docstring); returns (result, the variant's output)."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    rss_before = _peak_rss_mb()
    start = time.perf_counter()
    with torch.inference_mode():
        out = run()
        sync()
        first_ms = 1000 * (time.perf_counter() - start)
        for _ in range(max(warmup - 1, 0)):
            run()
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            sync()
            times.append(1000 * (time.perf_counter() - start))
    times.sort()
    median = statistics.median(times)
    result: dict[str, Any] = {
        "latency_ms": {
            "median": median,
            "p10": _percentile(times, 0.1),
            "p90": _percentile(times, 0.9),
            "iqr": _percentile(times, 0.75) - _percentile(times, 0.25),
            "min": times[0],
            "first_call": first_ms,
        },
        "images_per_s": 1000 * batch / median,
    }
    if device.type == "cuda":
        result["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["peak_memory_kind"] = "torch.cuda.max_memory_allocated"
    else:
        result["peak_memory_mb"] = max(_peak_rss_mb() - rss_before, 0.0)
        result["peak_memory_kind"] = "growth of process peak RSS (lower bound)"
        result["process_peak_rss_mb"] = _peak_rss_mb()
    out = out.float().to(device)
    result["max_abs_diff"] = 0.0 if reference is None else float((out - reference).abs().max())
    return result, out


def _load(model_or_weights: nn.Module | str | Path, options: dict[str, Any] | None) -> nn.Module:
    """A module, a run directory or weights file, or a registered model name (paper
    configuration updated by `options`)."""
    if isinstance(model_or_weights, nn.Module):
        return model_or_weights
    text = str(model_or_weights)
    from seglab.models import MODELS, create_model

    if text in MODELS and not Path(text).exists():
        info = MODELS[text]
        kwargs = {"num_classes": 21, **info.paper_options, "in_channels": 3, **(options or {})}
        return create_model(text, **kwargs)
    if Path(text).suffix in (".safetensors", ".yaml") or Path(text).exists():
        from seglab.runs import resolve_run
        from seglab.weights import load_weights

        weights, _ = resolve_run(
            Path(text).with_suffix(".safetensors") if Path(text).suffix == ".yaml" else text
        )
        return load_weights(weights)[0]
    raise SeglabError(
        f"{text!r} is neither a run directory, a weights file nor a registered model; "
        "see `seglab models`"
    )


def benchmark(
    model_or_weights: nn.Module | str | Path,
    size: Size = (512, 512),
    batch: int = 1,
    device: str | torch.device = "cpu",
    repeats: int = 20,
    warmup: int = 3,
    variants: Sequence[str] = ("eager",),
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Parameters, GFLOPs, latency, throughput and peak memory of a model (see module doc).

    Args:
        model_or_weights: an nn.Module, NAME.safetensors (with NAME.yaml), or a registered
            model name, built in its paper configuration updated by `options`.
        size: (H, W) of the random input; batch: images per forward pass.
        variants: any of VARIANTS; "eager" is always run first as the reference. A variant
            that cannot run here (e.g. torch.compile without a compiler) gets an "error"
            entry instead of numbers; the others still run.

    Returns:
        {"model", "parameters", "gflops" (per image), "input", "device", "threads", "torch",
        "variants": {name: {"latency_ms": {median, p10, p90, iqr, min, first_call},
        "images_per_s", "peak_memory_mb", "max_abs_diff", "note"} or {"error": ...}}}
    """
    from seglab.models import count_parameters

    device = resolve_device(device, option="--device")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SeglabError(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    if repeats < 1 or batch < 1:
        raise SeglabError("repeats and batch must be at least 1")
    model = _load(model_or_weights, options).to(device).eval()
    spec = getattr(model, "seglab_spec", None)  # a plain nn.Module of the user's has none
    inputs = torch.randn(
        batch, input_channels(model), *size, generator=torch.Generator().manual_seed(0)
    ).to(device)
    report: dict[str, Any] = {
        "model": f"{spec['name']} {spec['options']}" if spec else type(model).__name__,
        "parameters": count_parameters(model),
        "gflops": count_flops(model, size) / 1e9,
        "input": list(inputs.shape),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "repeats": repeats,
        "warmup": warmup,
        "variants": {},
    }
    reference = None
    for variant in ["eager", *[v for v in variants if v != "eager"]]:
        try:
            run, note = _prepare(variant, model, inputs)
            result, out = _time_variant(run, device, repeats, warmup, batch, reference)
        except SeglabError:
            raise
        except Exception as error:  # noqa: BLE001 - report it and go on with the others
            report["variants"][variant] = {"error": f"{type(error).__name__}: {error}"[:300]}
            continue
        if reference is None:
            reference = out
        result["note"] = note
        report["variants"][variant] = result
    return report


def format_report(report: dict[str, Any]) -> str:
    """A Markdown table of the variants under one line about the model."""
    lines = [
        f"{report['model']}: {report['parameters']:,d} parameters, "
        f"{report['gflops']:.2f} GFLOPs per image; input {'x'.join(map(str, report['input']))} "
        f"on {report['device']} ({report['threads']} threads), torch {report['torch']}, "
        f"median of {report['repeats']} after {report['warmup']} warm-up",
        "",
        "| variant | median ms | p10 ms | p90 ms | images/s | peak mem MB | max abs diff | note |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, result in report["variants"].items():
        if "error" in result:
            lines.append(f"| {name} | - | - | - | - | - | - | failed: {result['error']} |")
            continue
        t = result["latency_ms"]
        lines.append(
            f"| {name} | {t['median']:.1f} | {t['p10']:.1f} | {t['p90']:.1f} | "
            f"{result['images_per_s']:.2f} | {result['peak_memory_mb']:.0f} | "
            f"{result['max_abs_diff']:.1e} | {result['note']} |"
        )
    return "\n".join(lines)


__all__ = [
    "VARIANTS",
    "benchmark",
    "count_flops",
    "eval_path_batchnorms",
    "fold_batchnorm",
    "format_report",
    "model_gflops",
]
