"""The fastest way to run a trained model that gives the same labels: what Segmenter, `seglab
eval` and `seglab predict` use by default.

variant "auto" (the default) makes a copy of the model with every BatchNorm folded into the
conv before it (seglab/nn/fold_batchnorm.py), in channels_last memory layout where that helps
on the device (CUDA always; the CPU only for the families in CHANNELS_LAST_CPU, measured per
family: oneDNN's CPU kernels are not faster in NHWC for every network), and the callers run it
under torch.inference_mode. "eager" runs the model as it is (the reference). "fp16" and "bf16"
add autocast on a GPU: faster, but labels may differ from eager where two classes are close.

backend "onnxruntime" runs the exported ONNX graph (seglab/onnx_graph.py) on the CPU: one
session per input shape, since a fixed-shape graph is both exact (a traced graph can bake a
shape-dependent Python value in) and what onnxruntime optimises best; overlap-tile tiles still
run in torch. Labels equal eager's and probabilities agree to 1e-4 (tests/test_fast_inference.py).
"""

from __future__ import annotations

import copy
import os
from collections import OrderedDict

import torch
from torch import nn

from seglab.errors import SeglabError
from seglab.models.base import main_logits
from seglab.nn.fold_batchnorm import count_batchnorms, fold_batchnorm, input_channels

__all__ = ["BACKENDS", "CHANNELS_LAST_CPU", "VARIANTS", "FastModel", "prepare_for_inference"]

VARIANTS = ("auto", "eager", "fp16", "bf16")
BACKENDS = ("torch", "onnxruntime")
CHANNELS_LAST_CPU: set[str] = set()
"""Registered model names that run faster in channels_last on the CPU (benchmark them with
`seglab benchmark NAME --variants eager,channels_last`); empty until measured on a quiet
machine, so the CPU default is the contiguous (NCHW) layout."""

_FOLD_SIZES = (64, 128, 256, 512)  # example inputs for finding conv -> BN pairs, smallest first
_SESSIONS_KEPT = 8  # onnxruntime sessions (one per input shape) kept before the oldest goes


class FastModel(nn.Module):
    """A prepared model: forward(images (B, C, H, W)) -> logits (B, K, H, W).

    `module` is the torch model it runs (so seglab.models.base.unwrap finds the seglab model
    and its overlap-tile support); with onnxruntime the whole-image forward runs the ONNX
    graph of `source`, the unfolded model, instead.
    """

    def __init__(
        self,
        module: nn.Module,
        channels_last: bool = False,
        autocast: torch.dtype | None = None,
        onnx_source: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.module = module
        self.channels_last = channels_last
        self.autocast = autocast
        self.onnx_source = [onnx_source] if onnx_source is not None else None  # not a child
        self.sessions: OrderedDict[tuple[int, ...], object] = OrderedDict()

    @property
    def seglab_spec(self) -> dict:
        return self.module.seglab_spec

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _autocast(self, device: torch.device):
        enabled = self.autocast is not None
        return torch.autocast(device.type, dtype=self.autocast or torch.float16, enabled=enabled)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.onnx_source is not None:
            return self._run_onnx(images)
        with self._autocast(images.device):
            return main_logits(self.module(self._layout(images)))

    def forward_tile(self, tile: torch.Tensor) -> torch.Tensor:
        with self._autocast(tile.device):
            return self.module.forward_tile(self._layout(tile))

    def tile_input_size(self, size: int) -> int:
        return self.module.tile_input_size(size)

    def output_size(self, size: int) -> int:
        return self.module.output_size(size)

    def _run_onnx(self, images: torch.Tensor) -> torch.Tensor:
        shape = tuple(images.shape)
        session = self.sessions.pop(shape, None) or _onnx_session(self.onnx_source[0], images)
        self.sessions[shape] = session  # most recently used last
        while len(self.sessions) > _SESSIONS_KEPT:
            self.sessions.popitem(last=False)
        feed = {"image": images.detach().float().cpu().contiguous().numpy()}
        return torch.from_numpy(session.run(None, feed)[0]).to(images.device)


def _onnx_session(model: nn.Module, images: torch.Tensor):
    """An onnxruntime CPU session of `model` traced at exactly images' shape."""
    from seglab.onnx_graph import fixed_shape_graph, require_onnx

    _, ort = require_onnx(runtime=True)
    graph, errors = fixed_shape_graph(model, images)
    if graph is None:
        raise SeglabError(
            f"backend onnxruntime: this model does not export to ONNX ({'; '.join(errors)}); "
            "use backend torch (--backend torch)"
        )
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.intra_op_num_threads = torch.get_num_threads()  # the same budget as torch's
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        # onnxruntime's own pool spins too; sleep when idle as torch's OpenMP threads do
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def _fold(model: nn.Module) -> tuple[nn.Module, str]:
    """(a BN-folded copy, or the model itself when there is nothing to fold; what was done)."""
    before = count_batchnorms(model)
    if before == 0:
        return model, "no BN to fold"
    device = next(model.parameters()).device
    channels = input_channels(model)
    for size in _FOLD_SIZES:  # some models need a minimum input size (pooling pyramids)
        try:
            folded = fold_batchnorm(model, torch.zeros(1, channels, size, size, device=device))
        except Exception:  # noqa: BLE001 - too small for this model: try a larger example
            continue
        return folded, f"BN folded ({before - count_batchnorms(folded)} of {before})"
    return model, "BN not folded (no example size ran)"


def _wants_channels_last(model: nn.Module, device: torch.device, setting: bool | None) -> bool:
    if setting is not None:
        return setting
    if device.type == "cuda":
        return True
    return getattr(model, "seglab_spec", {}).get("name") in CHANNELS_LAST_CPU


def prepare_for_inference(
    model: nn.Module,
    device: torch.device | str,
    variant: str = "auto",
    backend: str = "torch",
    channels_last: bool | None = None,
) -> tuple[nn.Module, str]:
    """(the model to call, a one-line description of the variant) for eval-mode inference.

    model: already on `device`; it is not changed (folding and layout work on a copy).
    channels_last: None = the device's default (see the module docstring).
    Callers run the returned model under torch.inference_mode().
    """
    device = torch.device(device)
    if variant not in VARIANTS:
        raise SeglabError(f"inference variant {variant!r} is not one of: {', '.join(VARIANTS)}")
    if backend not in BACKENDS:
        raise SeglabError(f"inference backend {backend!r} is not one of: {', '.join(BACKENDS)}")
    model.eval()
    if backend == "onnxruntime":
        if variant in ("fp16", "bf16"):
            raise SeglabError(f"variant {variant} is torch autocast; use it with backend torch")
        threads = torch.get_num_threads()
        described = f"onnxruntime CPU, {threads} threads, one session per input shape"
        return FastModel(model, onnx_source=model).eval(), described
    if variant == "eager":
        return FastModel(model).eval(), "torch eager (no BN folding, default layout)"
    autocast = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(variant)
    if autocast is not None and device.type != "cuda":
        raise SeglabError(f"variant {variant} (autocast) needs a GPU; on the CPU use auto")
    module, folding = _fold(model)
    layout = _wants_channels_last(model, device, channels_last)
    if layout:
        module = module if module is not model else copy.deepcopy(model)
        module.to(memory_format=torch.channels_last)
    parts = [
        f"torch {variant}",
        folding,
        f"channels_last {'on' if layout else 'off'} ({device.type})",
        *([f"autocast {variant}"] if autocast is not None else []),
        "inference_mode",
    ]
    return FastModel(module, layout, autocast).eval(), ", ".join(parts)
