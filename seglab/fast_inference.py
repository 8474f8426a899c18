"""The fastest way to run a trained model that gives the same labels: what Segmenter, `seglab
eval` and `seglab predict` use by default.

variant "auto" (the default) makes a copy of the model with every BatchNorm folded into the
conv before it (seglab/nn/fold_batchnorm.py), in channels_last memory layout where that helps
on the device (CUDA always; the CPU only for the families in CHANNELS_LAST_CPU, measured per
family: oneDNN's CPU kernels are not faster in NHWC for every network), and the callers run it
under torch.inference_mode. The channels_last copy is checked once on a random example against
the contiguous layout; a model that fails there, or later on one input size (an op that needs
contiguous memory, such as a .view), runs contiguous from then on, with a one-line notice on
stderr. "eager" runs the model as it is (the reference). "fp16" and "bf16" add autocast on a
GPU: faster, but labels may differ from eager where two classes are close.

Measured and not taken (DeepLabv3-ResNet50, 512x512, 2 threads, per-round ratio to
torchvision eager, one interleaved run): BN folded 0.86, folded + channels_last 0.66,
torch.jit.trace + freeze + optimize_for_inference (oneDNN conv fusion) 0.82 contiguous and 0.77
channels_last, with a trace per input shape and a second copy of the weights.

backend "onnxruntime" runs the exported ONNX graph (seglab/onnx_graph.py) on the CPU: one
session per input shape, since a fixed-shape graph is both exact (a traced graph can bake a
shape-dependent Python value in) and what onnxruntime optimises best; overlap-tile tiles still
run in torch. Labels equal eager's and probabilities agree to 1e-4 (tests/test_fast_inference.py).
"""

from __future__ import annotations

import copy
import os
import sys
from collections import OrderedDict

import torch
from torch import nn

from seglab.errors import SeglabError, first_line
from seglab.models.base import main_logits
from seglab.nn.fold_batchnorm import count_batchnorms, fold_batchnorm, input_channels

__all__ = ["BACKENDS", "CHANNELS_LAST_CPU", "VARIANTS", "FastModel", "prepare_for_inference"]

VARIANTS = ("auto", "eager", "fp16", "bf16")
BACKENDS = ("torch", "onnxruntime")
CHANNELS_LAST_CPU: set[str] = {
    "bisenet",
    "bisenet_r18",
    "deeplabv1",
    "deeplabv3",
    "deeplabv3_torchvision",
    "dfanet",
    "dupsampling",
    "fastfcn",
    "refinenet",
    "segnet",
    "unet",
}
"""Registered model names whose BN-folded forward took <= 0.90x the time in channels_last than
contiguous on the CPU (2 threads, default options, 21 classes, 256x256, median of 3
interleaved rounds; deeplabv3_torchvision 0.79 there and 0.75 at 512x512; measured
2026-12-01, figures in benchmarks/RESULTS.md "## seglab default variant"). Measured and left
contiguous: fcn_resnet 0.93, deeplabv3plus 0.93, pspnet 0.91, dilated_context 0.91, lednet 0.94,
deeplabv2 1.01, danet 1.03, fcn8s 1.15, and acnet (0.83, but its logits moved by 1e-2)."""

_FOLD_SIZES = (64, 128, 256, 512)  # example inputs for finding conv -> BN pairs, smallest first
_LAYOUT_TOLERANCE = 1e-4  # max |logit difference| / max(1, max |logit|) between the layouts
_SESSIONS_KEPT = 8  # onnxruntime sessions (one per input shape) kept before the oldest goes


def _notice(text: str) -> None:
    """One line on stderr: the fast path stepped back to the plain folded model."""
    print(f"seglab inference: {text}", file=sys.stderr, flush=True)


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

    def _run(self, method: str, x: torch.Tensor) -> torch.Tensor:
        """self.module.<method>(x) in the prepared layout; if channels_last fails where the
        contiguous layout works (an op that needs contiguous memory, e.g. a .view), this input
        and every later one run contiguous, with a one-line notice."""
        with self._autocast(x.device):
            if not self.channels_last:
                return getattr(self.module, method)(x)
            try:
                return getattr(self.module, method)(self._layout(x))
            except RuntimeError as error:
                self.module.to(memory_format=torch.contiguous_format)
                try:
                    out = getattr(self.module, method)(x.contiguous())
                except RuntimeError:
                    self.module.to(memory_format=torch.channels_last)
                    raise error from None  # not the layout: the input itself fails
                self.channels_last = False
                reason = first_line(error, "error")
                _notice(f"channels_last failed at {tuple(x.shape)} ({reason}); running contiguous")
                return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.onnx_source is not None:
            return self._run_onnx(images)
        return main_logits(self._run("forward", images))

    def forward_tile(self, tile: torch.Tensor) -> torch.Tensor:
        return self._run("forward_tile", tile)

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


def _example_size(model: nn.Module, device: torch.device) -> int | None:
    """The smallest of _FOLD_SIZES that the model runs at (pooling pyramids need a minimum)."""
    channels = input_channels(model)
    for size in _FOLD_SIZES:
        try:
            with torch.no_grad():
                model(torch.zeros(1, channels, size, size, device=device))
        except Exception:  # noqa: BLE001 - too small for this model: try a larger example
            continue
        return size
    return None


def _fold(model: nn.Module, size: int | None) -> tuple[nn.Module, str]:
    """(a BN-folded copy, or the model itself when there is nothing to fold; what was done)."""
    before = count_batchnorms(model)
    if before == 0:
        return model, "no BN to fold"
    if size is None:
        return model, "BN not folded (no example size ran)"
    device = next(model.parameters()).device
    example = torch.zeros(1, input_channels(model), size, size, device=device)
    folded = fold_batchnorm(model, example)
    return folded, f"BN folded ({before - count_batchnorms(folded)} of {before})"


def _wants_channels_last(model: nn.Module, device: torch.device, setting: bool | None) -> str:
    """'' if the model should run in channels_last, else why not."""
    if setting is not None:
        return "" if setting else "off as asked"
    if device.type == "cuda":
        return ""
    name = getattr(model, "seglab_spec", {}).get("name")
    return "" if name in CHANNELS_LAST_CPU else f"not measured faster for {name}"


def _check_channels_last(module: nn.Module, size: int | None) -> str:
    """Converts `module` to channels_last if it then gives the contiguous layout's logits
    (within _LAYOUT_TOLERANCE) on a random example; '' if it did, else why not."""
    if size is None:
        return "no example size ran"
    device = next(module.parameters()).device
    generator = torch.Generator(device=device).manual_seed(0)
    shape = (1, input_channels(module), size, size)
    x = torch.randn(shape, generator=generator, device=device)
    with torch.no_grad():
        expected = main_logits(module(x))
        module.to(memory_format=torch.channels_last)
        try:
            got = main_logits(module(x.contiguous(memory_format=torch.channels_last)))
            diff = (got - expected).abs().max().item()
        except Exception as error:  # noqa: BLE001 - any failure means: stay contiguous
            diff, why = None, first_line(error, "error")
    if diff is not None and diff <= _LAYOUT_TOLERANCE * max(1.0, expected.abs().max().item()):
        return ""
    module.to(memory_format=torch.contiguous_format)
    return why if diff is None else f"logits differ by {diff:.1e}"


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
    why_not = _wants_channels_last(model, device, channels_last)
    needs_example = count_batchnorms(model) > 0 or not why_not
    size = _example_size(model, device) if needs_example else None
    module, folding = _fold(model, size)
    if not why_not:
        module = module if module is not model else copy.deepcopy(model)
        why_not = _check_channels_last(module, size)
        if why_not:
            _notice(f"channels_last off: {why_not}; running the folded model contiguous")
    layout = not why_not
    parts = [
        f"torch {variant}",
        folding,
        f"channels_last {'on' if layout else 'off'} ({device.type}"
        + (f"; {why_not})" if why_not else ")"),
        *([f"autocast {variant}"] if autocast is not None else []),
        "inference_mode",
    ]
    return FastModel(module, layout, autocast).eval(), ", ".join(parts)
