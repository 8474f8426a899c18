"""ONNX export of trained weights, checked against PyTorch before anything is written.

The ONNX graph takes `image`: (B, C, H, W) float32, normalised as in training (ImageNet mean
and std, stored in the file's metadata), and returns `logits`: (B, K, H, W).

Which exporter: the TorchScript-based one (`dynamo=False`) first. It exported every model
registered when this was written with dynamic batch, height and width, in under a second each;
the dynamo exporter (torch.export + onnxscript) needed 4-10 s per model and gave up after 90 s
on U-Net's valid padding, whose input padding is computed by a Python loop over the size.

Tracing silently bakes a shape-dependent branch into the graph (a pad taken only when a pooled
side was odd, at one level of the network), and such a graph holds at the traced size but not
at another. So a graph with dynamic height and width is run in onnxruntime at the traced size
and at CHECK_SIZES: sides that are no multiple of any stride a model has, odd at different
levels of a stride-32 network (97 = odd at 1/1, 131 at 1/1 and 1/2, 100 at 1/4, 150 at 1/2,
1/4 and 1/16), and written only when every one agrees with PyTorch. Otherwise, and for a
model whose contract declares `export_fixed_size` (adaptive pooling bins, unpooling by
indices), the spatial size is fixed at `size` (batch still dynamic), by TorchScript and then
by dynamo (which handles max-unpooling with an output size, where TorchScript cannot), and
the report says why. If nothing passes, a SeglabError says why each attempt failed. The file
is written atomically and only after the check passed.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from seglab.atomic import write_bytes_atomically
from seglab.errors import SeglabError
from seglab.models.base import SegmentationModel
from seglab.nn.fold_batchnorm import input_channels
from seglab.onnx_graph import LogitsOnly, ort_session, require_onnx, to_onnx

Size = tuple[int, int]
EXPORTERS = ("auto", "torchscript", "dynamo")
CHECK_SIZES: tuple[Size, ...] = ((97, 131), (100, 150), (500, 375))

__all__ = ["CHECK_SIZES", "EXPORTERS", "ExportReport", "export_model_onnx", "export_onnx"]


@dataclass
class ExportReport:
    """What export_onnx wrote and how well the ONNX graph agrees with PyTorch.

    dynamic_axes: the input axes that may vary, e.g. ("batch", "height", "width").
    checks: (input shape, max |onnxruntime - PyTorch|) per checked input.
    logit_scale: max |PyTorch logits| over the checked inputs; each check's limit is
        atol * max(1, its input's logit scale), since float32 rounding grows with magnitude
        (an untrained deep network in eval mode can reach logits of 1e5).
    fixed_size_reason: why height and width are fixed (None when they are dynamic).
    notes: why earlier attempts were dropped (e.g. a traced graph that only held at one size).
    """

    path: Path
    model: str
    exporter: str
    opset: int
    dynamic_axes: tuple[str, ...]
    traced_shape: tuple[int, ...]
    checks: list[tuple[tuple[int, ...], float]] = field(default_factory=list)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    fixed_size_reason: str | None = None
    logit_scale: float = 0.0

    @property
    def max_abs_diff(self) -> float | None:
        return max((diff for _, diff in self.checks), default=None)

    def summary(self) -> str:
        """A few lines for the command line."""
        axes = ", ".join(self.dynamic_axes) or "none (fixed input shape)"
        if self.fixed_size_reason and "height" not in self.dynamic_axes:
            h, w = self.traced_shape[2:]
            axes += f"; spatial size fixed at {h}x{w}: {self.fixed_size_reason}"
        lines = [
            f"wrote {self.path} ({self.path.stat().st_size / 1e6:.1f} MB): {self.model}, "
            f"{self.exporter} exporter, opset {self.opset}, {self.seconds:.1f} s",
            f"dynamic axes: {axes}; traced at {'x'.join(map(str, self.traced_shape))}",
        ]
        if self.checks:
            checked = ", ".join(f"{'x'.join(map(str, s))}: {d:.2e}" for s, d in self.checks)
            lines.append(
                f"onnxruntime vs PyTorch, max abs difference: {checked} "
                f"(logits up to {self.logit_scale:.3g})"
            )
        else:
            lines.append("not checked against onnxruntime (--no-check)")
        reason = self.fixed_size_reason or ""
        lines += [f"note: {n}" for n in self.notes if n.removeprefix("dropped ") not in reason]
        return "\n".join(lines)


@dataclass(frozen=True)
class _Attempt:
    exporter: str  # torchscript | dynamo
    spatial_dynamic: bool
    batch_dynamic: bool

    @property
    def axes(self) -> tuple[str, ...]:
        return (("batch",) if self.batch_dynamic else ()) + (
            ("height", "width") if self.spatial_dynamic else ()
        )

    def describe(self) -> str:
        return f"{self.exporter} with dynamic {', '.join(self.axes) or 'nothing'}"


def _plan(
    channels: int, size: Size, check_sizes: Sequence[Size], attempt: _Attempt
) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
    """(shape traced at, shapes checked). A dynamic graph is traced at batch 2 and checked at
    batch 1, at the traced size and at every check size; a fixed one at batches 1 and 3."""
    h, w = size
    if attempt.spatial_dynamic:
        others = [(1, channels, *s) for s in dict.fromkeys(map(tuple, check_sizes)) if s != (h, w)]
        return (2, channels, h, w), [(1, channels, h, w), *others]
    if attempt.batch_dynamic:
        return (2, channels, h, w), [(1, channels, h, w), (3, channels, h, w)]
    return (1, channels, h, w), [(1, channels, h, w)]


def _first_line(error: BaseException) -> str:
    """The root cause's first line, without terminal colours: the reason in one line."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200] if text else ''}"


def _check(
    graph: bytes, module: nn.Module, shapes: list[tuple[int, ...]], atol: float
) -> tuple[list[tuple[tuple[int, ...], float]], float]:
    """(max |onnxruntime - PyTorch| per shape, max |PyTorch logits|); raises ValueError on
    the first difference over atol * max(1, max |logits|) or a different output shape."""
    session = ort_session(graph)
    generator = torch.Generator().manual_seed(0)
    results, scale = [], 0.0
    for shape in shapes:
        shape_text = "x".join(map(str, shape))
        image = torch.randn(shape, generator=generator)
        try:
            with torch.no_grad():
                expected = module(image).float().numpy()
        except Exception as error:
            raise ValueError(
                f"PyTorch itself fails at {shape_text}: {_first_line(error)}"
            ) from None
        try:
            got = session.run(None, {"image": image.numpy()})[0]
        except Exception as error:
            raise ValueError(f"at {shape_text}: {_first_line(error)}") from None
        if got.shape != expected.shape:
            raise ValueError(f"at {shape_text} gives {got.shape}, PyTorch {expected.shape}")
        diff = float(np.abs(got - expected).max())
        magnitude = float(np.abs(expected).max())
        limit = atol * max(1.0, magnitude)
        if not diff < limit:
            raise ValueError(
                f"at {shape_text} differs from PyTorch by {diff:.2e} (limit {limit:.2e})"
            )
        results.append((shape, diff))
        scale = max(scale, magnitude)
    return results, scale


def _attempts(dynamic: bool, exporter: str) -> list[_Attempt]:
    if exporter not in EXPORTERS:
        raise SeglabError(f"exporter {exporter!r} is not one of: {', '.join(EXPORTERS)}")
    if not dynamic:
        order = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
        return [_Attempt(name, False, False) for name in order]
    if exporter in ("torchscript", "dynamo"):
        return [_Attempt(exporter, True, True), _Attempt(exporter, False, True)]
    # auto: dynamo with dynamic height/width is left out because symbolic shapes in a Python
    # size loop (U-Net valid padding) take minutes to fail; ask for exporter="dynamo" to try.
    return [
        _Attempt("torchscript", True, True),
        _Attempt("torchscript", False, True),
        _Attempt("dynamo", False, True),
    ]


def _declared_fixed_size(model: nn.Module) -> str | None:
    """The contract's `export_fixed_size` reason; a plain nn.Module declares nothing."""
    return model.export_fixed_size if isinstance(model, SegmentationModel) else None


def export_model_onnx(
    model: nn.Module,
    out_path: str | Path,
    dynamic: bool = True,
    opset: int = 17,
    check: bool = True,
    size: Size = (512, 512),
    exporter: str = "auto",
    atol: float = 1e-4,
    metadata: dict[str, str] | None = None,
    check_sizes: Sequence[Size] = CHECK_SIZES,
) -> ExportReport:
    """Export a model (see export_onnx); `metadata` goes into the file's metadata_props."""
    require_onnx(runtime=check)
    start = time.perf_counter()
    spec = getattr(model, "seglab_spec", None)  # a plain nn.Module has none
    name = spec["name"] if spec else type(model).__name__
    if isinstance(model, SegmentationModel) and model.task != "semantic":
        raise SeglabError(
            f"cannot export {name} to ONNX: it is an {model.task} model, and the export writes "
            "a graph returning semantic logits (B, K, H, W); instance models export with "
            "seglab.instance_export.export_instance_onnx (boxes, labels, scores, masks)"
        )
    channels = input_channels(model)
    module = LogitsOnly(model.float().eval()).eval()
    attempts = _attempts(dynamic, exporter)
    declared = _declared_fixed_size(model)
    failures: list[str] = []
    notes: list[str] = []
    if declared and any(a.spatial_dynamic for a in attempts):
        attempts = [a for a in attempts if not a.spatial_dynamic]
        notes.append(f"no dynamic height and width: {name} declares export_fixed_size")
    torchscript_raised = False  # rather than exporting a graph that failed the check
    for attempt in attempts:
        if attempt.exporter == "torchscript" and torchscript_raised and attempt.batch_dynamic:
            # With any dynamic axis TorchScript treats every size as symbolic, so an export
            # that failed with dynamic H/W fails the same way with a dynamic batch only.
            continue
        traced, shapes = _plan(channels, size, check_sizes, attempt)
        example = torch.randn(traced, generator=torch.Generator().manual_seed(1))
        try:
            try:
                proto = to_onnx(module, example, attempt.exporter, attempt.axes, opset)
            except SeglabError:
                raise
            except Exception:
                torchscript_raised |= attempt.exporter == "torchscript"
                raise
            checks, scale = (
                _check(proto.SerializeToString(), module, shapes, atol) if check else ([], 0.0)
            )
        except SeglabError:
            raise
        except Exception as error:  # any exporter or runtime failure: try the next way
            failures.append(f"{attempt.describe()}: {_first_line(error)}")
            continue
        reason = None
        if dynamic and not attempt.spatial_dynamic:
            reason = declared or f"the dynamic graph failed: {failures[0]}"
        entries = {**(metadata or {}), **({"fixed_size_reason": reason} if reason else {})}
        for key, value in entries.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        data = proto.SerializeToString()
        out_path = Path(out_path)
        write_bytes_atomically(out_path, data)
        opsets = [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")]
        return ExportReport(
            path=out_path,
            model=name,
            exporter=attempt.exporter,
            opset=opsets[0] if opsets else opset,
            dynamic_axes=attempt.axes,
            traced_shape=traced,
            checks=checks,
            seconds=time.perf_counter() - start,
            notes=notes + [f"dropped {failure}" for failure in failures],
            fixed_size_reason=reason,
            logit_scale=scale,
        )
    raise SeglabError(
        f"cannot export {name} to ONNX: " + "; ".join(failures) + " (nothing was written)"
    )


def export_onnx(
    weights_path: str | Path,
    out_path: str | Path | None = None,
    dynamic: bool = True,
    opset: int = 17,
    check: bool = True,
    size: Size = (512, 512),
    exporter: str = "auto",
    atol: float = 1e-4,
    check_sizes: Sequence[Size] = CHECK_SIZES,
) -> ExportReport:
    """Export a run's weights to ONNX, check it, and write it atomically.

    Args:
        weights_path: a run directory (its best.safetensors) or NAME.safetensors; the YAML
            beside the weights names the model.
        out_path: the .onnx file (default: the weights path with suffix .onnx).
        dynamic: let batch, height and width vary where the model allows (see the module
            docstring); a model that declares `export_fixed_size`, or whose dynamic graph
            fails a check, gets dynamic batch only with the spatial size fixed at `size`, and
            the report (and the file's metadata, `fixed_size_reason`) says why.
        opset: ONNX opset for the TorchScript exporter (the dynamo exporter uses >= 18).
        check: run onnxruntime against PyTorch: a dynamic graph at `size` and each of
            `check_sizes` (H, W), a fixed one at two batch sizes; a max abs difference
            >= atol * max(1, max |logits|) (or a different output shape) fails that attempt.
        size: (H, W) of the example input; the fixed size when the spatial size cannot vary.
        exporter: "auto", "torchscript" or "dynamo".

    Returns:
        An ExportReport; raises SeglabError if the model cannot be exported, saying why.
    """
    from seglab.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from seglab.runs import resolve_run
    from seglab.weights import load_weights

    weights_path, _ = resolve_run(weights_path)
    model, meta = load_weights(weights_path)
    channels = input_channels(model)
    metadata = {
        "seglab_model": json.dumps({k: meta[k] for k in meta if k != "classes"}),
        "input": f"image: (B, {channels}, H, W) float32 in 0..1, normalised by mean and std",
        "normalize_mean": json.dumps(list(IMAGENET_MEAN)),
        "normalize_std": json.dumps(list(IMAGENET_STD)),
        "output": "logits: (B, K, H, W) float32; argmax over K is the label",
    }
    if "classes" in meta:
        metadata["classes"] = json.dumps(meta["classes"])
    out = Path(out_path) if out_path else Path(weights_path).with_suffix(".onnx")
    return export_model_onnx(
        model, out, dynamic, opset, check, size, exporter, atol, metadata, check_sizes
    )
