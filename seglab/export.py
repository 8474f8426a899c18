"""ONNX export of trained weights, checked against PyTorch before anything is written.

The ONNX graph takes `image`: (B, 3, H, W) float32, normalised as in training (ImageNet mean
and std, stored in the file's metadata), and returns `logits`: (B, K, H, W).

Which exporter: the TorchScript-based one (`dynamo=False`) first. It exported every model
registered when this was written with dynamic batch, height and width, in under a second each;
the dynamo exporter (torch.export + onnxscript) needed 4-10 s per model and gave up after 90 s
on U-Net's valid padding, whose input padding is computed by a Python loop over the size.
Tracing can silently bake a shape-dependent branch into the graph, so every export is run in
onnxruntime on sizes other than the one it was traced at; a graph that only holds for the
traced size is exported again with a fixed spatial size (batch still dynamic), by TorchScript
and then by dynamo (which handles max-unpooling with an output size, where TorchScript cannot).
If nothing passes, a SeglabError says why each attempt failed. The file is written atomically
and only after the check passed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from seglab.errors import SeglabError

Size = tuple[int, int]
EXPORTERS = ("auto", "torchscript", "dynamo")


@dataclass
class ExportReport:
    """What export_onnx wrote and how well the ONNX graph agrees with PyTorch.

    dynamic_axes: the input axes that may vary, e.g. ("batch", "height", "width").
    checks: (input shape, max |onnxruntime - PyTorch|) per checked input.
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

    @property
    def max_abs_diff(self) -> float | None:
        return max((diff for _, diff in self.checks), default=None)

    def summary(self) -> str:
        """A few lines for the command line."""
        axes = ", ".join(self.dynamic_axes) or "none (fixed input shape)"
        lines = [
            f"wrote {self.path} ({self.path.stat().st_size / 1e6:.1f} MB): {self.model}, "
            f"{self.exporter} exporter, opset {self.opset}, {self.seconds:.1f} s",
            f"dynamic axes: {axes}; traced at {'x'.join(map(str, self.traced_shape))}",
        ]
        if self.checks:
            checked = ", ".join(f"{'x'.join(map(str, s))}: {d:.2e}" for s, d in self.checks)
            lines.append(f"onnxruntime vs PyTorch, max abs difference: {checked}")
        else:
            lines.append("not checked against onnxruntime (--no-check)")
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)


class _LogitsOnly(nn.Module):
    """Eval-mode forward returning the (B, K, H, W) logits tensor, never the training dict."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        out = self.model(image)
        return out["out"] if isinstance(out, dict) else out


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


def _odd(n: int) -> int:
    return max(n | 1, 3)


def _plan(size: Size, attempt: _Attempt) -> tuple[tuple[int, ...], list[tuple[int, ...]]]:
    """(shape traced at, shapes checked). A dynamic graph is traced at an odd size and checked
    at two others, so a branch taken only for even (or only for odd) sizes cannot hide."""
    h, w = size
    if attempt.spatial_dynamic:
        traced = (2, 3, _odd(h + h // 4), _odd(w + w // 4))
        return traced, [(1, 3, h, w), (2, 3, _odd(h - h // 4), _odd(w - w // 4))]
    if attempt.batch_dynamic:
        return (2, 3, h, w), [(1, 3, h, w), (3, 3, h, w)]
    return (1, 3, h, w), [(1, 3, h, w)]


def _require_onnx(check: bool):
    try:
        import onnx
    except ImportError:
        raise SeglabError("ONNX export needs the onnx extra: pip install 'seglab[onnx]'") from None
    ort = None
    if check:
        try:
            import onnxruntime as ort
        except ImportError:
            raise SeglabError(
                "checking the export needs onnxruntime: pip install 'seglab[onnx]' "
                "(or pass check=False / --no-check)"
            ) from None
    return onnx, ort


def _first_line(error: BaseException) -> str:
    """The root cause's first line, without terminal colours: the reason in one line."""
    while error.__cause__ is not None:
        error = error.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:200] if text else ''}"


@contextlib.contextmanager
def _silenced_output() -> Iterator[None]:
    """Silence stdout and stderr, the C++ level included: on failure the TorchScript exporter
    prints the whole traced graph (thousands of lines); the reason comes back in the exception."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = []
    try:
        with open(os.devnull, "w") as devnull:
            for fd in (1, 2):
                saved.append((fd, os.dup(fd)))
                os.dup2(devnull.fileno(), fd)
            with (
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),
            ):
                yield
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)


def _export_bytes(module: nn.Module, example: torch.Tensor, attempt: _Attempt, opset: int):
    """Run one exporter; returns the ONNX ModelProto."""
    import onnx

    axes = {0: "batch"} if attempt.batch_dynamic else {}
    if attempt.spatial_dynamic:
        axes |= {2: "height", 3: "width"}
    with warnings.catch_warnings(), _silenced_output(), torch.no_grad():
        warnings.simplefilter("ignore")
        if attempt.exporter == "torchscript":
            buffer = io.BytesIO()
            torch.onnx.export(
                module,
                (example,),
                buffer,
                dynamo=False,
                opset_version=opset,
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes={"image": axes, "logits": axes} if axes else None,
                do_constant_folding=True,
            )
            return onnx.load_from_string(buffer.getvalue())
        try:
            import onnxscript  # noqa: F401
        except ImportError:
            raise SeglabError(
                "the dynamo exporter needs onnxscript: pip install 'seglab[onnx]'"
            ) from None
        dims = {i: torch.export.Dim(name, min=1 if i == 0 else 8) for i, name in axes.items()}
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            opset_version=max(opset, 18),  # the dynamo exporter starts at opset 18
            input_names=["image"],
            output_names=["logits"],
            dynamic_shapes={"image": dims} if dims else None,
            verbose=False,
            optimize=True,
        )
        return program.model_proto


def _check(
    session_bytes: bytes,
    module: nn.Module,
    shapes: list[tuple[int, ...]],
    atol: float,
    ort,
) -> list[tuple[tuple[int, ...], float]]:
    """Max |onnxruntime - PyTorch| per shape; raises ValueError on a mismatch."""
    options = ort.SessionOptions()
    options.log_severity_level = 4  # errors come back as exceptions; no console noise
    session = ort.InferenceSession(session_bytes, options, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    results = []
    for shape in shapes:
        image = torch.randn(shape, generator=generator)
        with torch.no_grad():
            expected = module(image).float().numpy()
        got = session.run(None, {"image": image.numpy()})[0]
        shape_text = "x".join(map(str, shape))
        if got.shape != expected.shape:
            raise ValueError(f"at {shape_text} gives {got.shape}, PyTorch {expected.shape}")
        diff = float(np.abs(got - expected).max())
        if not diff < atol:
            raise ValueError(f"at {shape_text} differs from PyTorch by {diff:.2e} (limit {atol})")
        results.append((shape, diff))
    return results


def _attempts(dynamic: bool, exporter: str) -> list[_Attempt]:
    if exporter not in EXPORTERS:
        raise SeglabError(f"exporter {exporter!r} is not one of: {', '.join(EXPORTERS)}")
    if not dynamic:
        order = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
        return [_Attempt(name, False, False) for name in order]
    if exporter == "torchscript":
        return [_Attempt("torchscript", True, True), _Attempt("torchscript", False, True)]
    if exporter == "dynamo":
        return [_Attempt("dynamo", True, True), _Attempt("dynamo", False, True)]
    # auto: dynamo with dynamic height/width is left out because symbolic shapes in a Python
    # size loop (U-Net valid padding) take minutes to fail; ask for exporter="dynamo" to try.
    return [
        _Attempt("torchscript", True, True),
        _Attempt("torchscript", False, True),
        _Attempt("dynamo", False, True),
    ]


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
) -> ExportReport:
    """Export a model (see export_onnx); `metadata` goes into the file's metadata_props."""
    onnx, ort = _require_onnx(check)
    start = time.perf_counter()
    name = getattr(model, "seglab_spec", {}).get("name", type(model).__name__)
    module = _LogitsOnly(model.float().eval()).eval()
    failures: list[str] = []
    torchscript_raised = False  # rather than exporting a graph that failed the check
    for attempt in _attempts(dynamic, exporter):
        if attempt.exporter == "torchscript" and torchscript_raised and attempt.batch_dynamic:
            # With any dynamic axis TorchScript treats every size as symbolic, so an export
            # that failed with dynamic H/W fails the same way with a dynamic batch only.
            continue
        traced, shapes = _plan(size, attempt)
        example = torch.randn(traced, generator=torch.Generator().manual_seed(1))
        try:
            try:
                proto = _export_bytes(module, example, attempt, opset)
            except SeglabError:
                raise
            except Exception:
                torchscript_raised |= attempt.exporter == "torchscript"
                raise
            for key, value in (metadata or {}).items():
                entry = proto.metadata_props.add()
                entry.key, entry.value = key, value
            data = proto.SerializeToString()
            checks = _check(data, module, shapes, atol, ort) if check else []
        except SeglabError:
            raise
        except Exception as error:  # any exporter or runtime failure: try the next way
            failures.append(f"{attempt.describe()}: {_first_line(error)}")
            continue
        from seglab.engine.checkpoint import write_atomically

        out_path = Path(out_path)
        write_atomically(out_path, lambda tmp, data=data: Path(tmp).write_bytes(data))
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
            notes=[f"dropped {failure}" for failure in failures],
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
) -> ExportReport:
    """Export NAME.safetensors (+ NAME.yaml) to ONNX, check it, and write it atomically.

    Args:
        weights_path: seglab weights; the YAML beside them names the model.
        out_path: the .onnx file (default: the weights path with suffix .onnx).
        dynamic: let batch, height and width vary where the model allows (see the module
            docstring); a model whose graph only holds at one size gets dynamic batch only,
            with the spatial size fixed at `size`, and the report says so.
        opset: ONNX opset for the TorchScript exporter (the dynamo exporter uses >= 18).
        check: run onnxruntime against PyTorch on two inputs of shapes other than the traced
            one; a max abs difference >= `atol` (or a different output shape) fails the export.
        size: (H, W) of the example input; the fixed size when the spatial size cannot vary.
        exporter: "auto", "torchscript" or "dynamo".

    Returns:
        An ExportReport; raises SeglabError if the model cannot be exported, saying why.
    """
    from seglab.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from seglab.engine.checkpoint import load_weights

    model, meta = load_weights(weights_path)
    metadata = {
        "seglab_model": json.dumps({k: meta[k] for k in meta if k != "classes"}),
        "input": "image: (B, 3, H, W) float32 RGB in 0..1, normalised by mean and std",
        "normalize_mean": json.dumps(list(IMAGENET_MEAN)),
        "normalize_std": json.dumps(list(IMAGENET_STD)),
        "output": "logits: (B, K, H, W) float32; argmax over K is the label",
    }
    if "classes" in meta:
        metadata["classes"] = json.dumps(meta["classes"])
    out = Path(out_path) if out_path else Path(weights_path).with_suffix(".onnx")
    return export_model_onnx(model, out, dynamic, opset, check, size, exporter, atol, metadata)


def parse_size(text: str) -> Size:
    """'512x384' -> (512, 384) as (H, W); '512' -> (512, 512)."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise SeglabError(f"size {text!r} is not HxW, e.g. 512x512")
    return parts[0], parts[1]


def cmd_export(args) -> None:
    """`seglab export`: print the report."""
    if args.format != "onnx":
        raise SeglabError(f"export format {args.format!r} is not supported; use --format onnx")
    report = export_onnx(
        args.checkpoint,
        args.out,
        dynamic=args.dynamic,
        opset=args.opset,
        check=args.check,
        size=parse_size(args.size),
        exporter=args.exporter,
    )
    print(report.summary())


def add_export_command(subparsers) -> None:
    """Declare `seglab export CHECKPOINT --format onnx [--dynamic] [--opset N] [--out PATH]`."""
    import argparse

    parser = subparsers.add_parser("export", help="export weights to ONNX, checked by onnxruntime")
    parser.add_argument("checkpoint", help="NAME.safetensors (with NAME.yaml beside it)")
    parser.add_argument("--format", default="onnx", choices=["onnx"], help="export format")
    parser.add_argument("--out", help="output file (default: the weights path with .onnx)")
    parser.add_argument(
        "--dynamic",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="dynamic batch and spatial size where the model allows (default on)",
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument(
        "--size", default="512x512", help="example input HxW; the fixed size if not dynamic"
    )
    parser.add_argument("--exporter", default="auto", choices=list(EXPORTERS))
    parser.add_argument(
        "--check",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compare onnxruntime with PyTorch on two input shapes (default on)",
    )
    parser.set_defaults(func=cmd_export)
