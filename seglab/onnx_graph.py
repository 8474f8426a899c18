"""A module as an ONNX graph, and that graph in onnxruntime: what export and benchmark share.

`to_onnx` runs one exporter (TorchScript tracing, or dynamo: torch.export + onnxscript) with
the named input axes left dynamic and returns the ONNX ModelProto; `ort_session` opens the
serialised graph in onnxruntime. The graph's input is `image`: (B, C, H, W) float32 and its
output `logits`: (B, K, H, W) (`LogitsOnly` makes any model return that in eval mode).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from seglab.errors import SeglabError
from seglab.models.base import main_logits

__all__ = [
    "AXES",
    "EXPORTERS",
    "LogitsOnly",
    "fixed_shape_graph",
    "ort_session",
    "require_onnx",
    "to_onnx",
]

EXPORTERS = ("torchscript", "dynamo")
AXES = {"batch": 0, "height": 2, "width": 3}  # name -> dimension of the (B, C, H, W) image


class LogitsOnly(nn.Module):
    """Eval-mode forward returning the (B, K, H, W) logits tensor, never the training dict."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return main_logits(self.model(image))


def require_onnx(runtime: bool = True) -> tuple[Any, Any]:
    """(onnx, onnxruntime or None); a SeglabError naming the extra when one is missing."""
    try:
        import onnx
    except ImportError:
        raise SeglabError("ONNX export needs the onnx extra: pip install 'seglab[onnx]'") from None
    ort = None
    if runtime:
        try:
            import onnxruntime as ort
        except ImportError:
            raise SeglabError(
                "checking or running ONNX needs onnxruntime: pip install 'seglab[onnx]' "
                "(or pass check=False / --no-check to export without the check)"
            ) from None
    return onnx, ort


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


def to_onnx(
    module: nn.Module,
    example: torch.Tensor,
    exporter: str = "torchscript",
    dynamic: Sequence[str] = (),
    opset: int = 17,
):
    """The ONNX ModelProto of `module` traced on `example` (B, C, H, W).

    dynamic: names from AXES ("batch", "height", "width") left free in the graph; the others
    are fixed at the example's size. opset applies to TorchScript; dynamo starts at 18.
    Any exporter failure propagates as the exporter raised it.
    """
    import onnx

    if exporter not in EXPORTERS:
        raise SeglabError(f"exporter {exporter!r} is not one of: {', '.join(EXPORTERS)}")
    axes = {AXES[name]: name for name in dynamic}
    with warnings.catch_warnings(), _silenced_output(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
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
            opset_version=max(opset, 18),
            input_names=["image"],
            output_names=["logits"],
            dynamic_shapes={"image": dims} if dims else None,
            verbose=False,
            optimize=True,
        )
        return program.model_proto


def fixed_shape_graph(model: nn.Module, example: torch.Tensor) -> tuple[bytes | None, list[str]]:
    """The serialized ONNX graph of `model`'s logits at exactly `example`'s shape, trying each
    exporter in turn: (graph, []) or (None, the exporters' one-word failures)."""
    module = LogitsOnly(model).eval()
    errors = []
    for exporter in EXPORTERS:
        try:
            return to_onnx(module, example.detach().float().cpu(), exporter).SerializeToString(), []
        except SeglabError:
            raise
        except Exception as error:  # noqa: BLE001 - try the other exporter
            errors.append(f"{exporter}: {type(error).__name__}")
    return None, errors


def ort_session(graph: bytes, threads: int | None = None, cuda: bool = False):
    """An onnxruntime session on the CPU (CUDA first if asked and available); errors come
    back as exceptions, never as console output."""
    _, ort = require_onnx(runtime=True)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    if threads:
        options.intra_op_num_threads = threads
    providers = ["CPUExecutionProvider"]
    if cuda and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(graph, options, providers=providers)
