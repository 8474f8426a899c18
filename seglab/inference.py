"""Inference: whole image, sliding window, U-Net overlap-tile, multi-scale + flip; Segmenter.

All modes return class probabilities (B, K, H, W) at the input size: averaging probabilities
(not logits) over windows, scales and flips is what the papers' multi-scale testing does.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path
from time import perf_counter

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from seglab.config import InferenceConfig
from seglab.data.depth import as_depth_tensor, normalize_depth
from seglab.data.folder import ClassInfo, read_image
from seglab.data.images import rgb_array, rgb_uint8
from seglab.data.transforms import normalize_image
from seglab.device import resolve_device
from seglab.errors import SeglabError
from seglab.fast_inference import prepare_for_inference
from seglab.models.base import SegmentationModel, main_logits, unwrap
from seglab.nn import mirror_pad, resize_to
from seglab.threads import AdaptiveThreads, adaptive_threads_enabled


def _window_starts(size: int, window: int, stride: int) -> list[int]:
    """Window origins covering [0, size) with the last window flush to the end."""
    if size <= window:
        return [0]
    starts = list(range(0, size - window, stride))
    return starts + [size - window]


def _check_stride(window: Sequence[int], stride: Sequence[int]) -> None:
    if any(s > w or s < 1 for s, w in zip(stride, window, strict=True)):
        raise SeglabError(
            f"inference.stride {list(stride)} must be 1..crop_size {list(window)}: a larger "
            "step leaves pixels that no window covers"
        )


def _window_grid(images: torch.Tensor, window: Sequence[int], stride: Sequence[int]):
    """Pad images smaller than the window; window origins and per-row/column overlap counts.

    The windows form a grid, so the number covering pixel (y, x) is rows[y] * cols[x]: two
    1-D counts instead of an (H, W) map. Only images smaller than the window are copied.
    Returns (images, ys, xs, rows, cols).
    """
    h, w = images.shape[-2:]
    wh, ww = window
    pad_h, pad_w = max(wh - h, 0), max(ww - w, 0)
    if pad_h or pad_w:
        images = F.pad(images, (0, pad_w, 0, pad_h))
    ph, pw = images.shape[-2:]
    _check_stride(window, stride)
    ys, xs = _window_starts(ph, wh, stride[0]), _window_starts(pw, ww, stride[1])
    rows = images.new_zeros(ph, dtype=torch.float32)
    cols = images.new_zeros(pw, dtype=torch.float32)
    for y in ys:
        rows[y : y + wh] += 1
    for x in xs:
        cols[x : x + ww] += 1
    return images, ys, xs, rows, cols


def slide_probabilities(
    model: torch.nn.Module,
    images: torch.Tensor,
    window: Sequence[int],
    stride: Sequence[int],
    batch_size: int,
) -> torch.Tensor:
    """(B, 3, H, W) -> (B, K, H, W): softmax of windows, averaged where windows overlap.

    Images smaller than the window are padded (zeros after normalisation = mean colour) and
    the padding is cropped off again. Windows go through the model `batch_size` at a time and
    are added into one preallocated (B, K, H, W) float32 output, which is then divided in
    place by the window count; so the peak memory is the output plus one batch of windows
    (crops, activations, probabilities), whatever the image size
    (benchmarks/large_image_memory.py measures it).
    """
    b, _, h, w = images.shape
    wh, ww = window
    images, ys, xs, rows, cols = _window_grid(images, window, stride)
    ph, pw = images.shape[-2:]
    boxes = [(y, x) for y in ys for x in xs]
    per_pass = max(1, batch_size // b)  # windows per forward pass, each with all B images
    total = None
    for start in range(0, len(boxes), per_pass):
        chunk = boxes[start : start + per_pass]
        crops = torch.cat([images[..., y : y + wh, x : x + ww] for y, x in chunk])
        probs = main_logits(model(crops)).float().softmax(1)  # (len(chunk) * B, K, wh, ww)
        del crops
        if total is None:
            total = images.new_zeros(b, probs.shape[1], ph, pw, dtype=torch.float32)
        for i, (y, x) in enumerate(chunk):
            total[..., y : y + wh, x : x + ww] += probs[i * b : (i + 1) * b]
        del probs
    total.div_(rows[:, None]).div_(cols)
    return total[..., :h, :w]


@torch.no_grad()
def slide_labels(
    model: torch.nn.Module,
    images: torch.Tensor,
    window: Sequence[int],
    stride: Sequence[int],
    batch_size: int,
) -> torch.Tensor:
    """(B, 3, H, W) -> (B, H, W) uint8 labels: slide_probabilities(...).argmax(1), streamed.

    Windows are taken one row of windows at a time; once the next row starts below a band of
    image rows, no later window touches that band, so it is averaged, reduced to labels and
    its probabilities dropped. Peak memory is the uint8 output plus a (B, K, window_h, W)
    float32 band (and a copy of the rows it carries over), instead of (B, K, H, W): what a
    10k x 10k aerial or pathology image needs. Needs K <= 256 (uint8 labels).
    """
    b, _, h, w = images.shape
    wh, ww = window
    images, ys, xs, rows, cols = _window_grid(images, window, stride)
    ph, pw = images.shape[-2:]
    labels = torch.empty(b, ph, pw, dtype=torch.uint8, device=images.device)
    per_pass = max(1, batch_size // b)
    band = None  # (B, K, wh, PW) probability sums for image rows y .. y + wh
    for row, y in enumerate(ys):
        for start in range(0, len(xs), per_pass):
            chunk = xs[start : start + per_pass]
            crops = torch.cat([images[..., y : y + wh, x : x + ww] for x in chunk])
            probs = main_logits(model(crops)).float().softmax(1)  # (len(chunk) * B, K, wh, ww)
            if band is None:
                band = probs.new_zeros(b, probs.shape[1], wh, pw)
            for i, x in enumerate(chunk):
                band[..., x : x + ww] += probs[i * b : (i + 1) * b]
            del crops, probs
        # Rows y .. next_y are final: average them, keep their labels, shift the rest up.
        next_y = ys[row + 1] if row + 1 < len(ys) else ph
        finished = next_y - y
        done = band[:, :, :finished]
        done.div_(rows[y:next_y, None]).div_(cols)
        labels[:, y:next_y] = done.argmax(1).to(torch.uint8)
        keep = wh - finished
        band[:, :, :keep] = band[:, :, finished:].clone()
        band[:, :, keep:] = 0
    return labels[:, :h, :w]


def overlap_tile_probabilities(
    model: torch.nn.Module, images: torch.Tensor, tile: Sequence[int] | None
) -> torch.Tensor:
    """U-Net's overlap-tile strategy for models with valid convolutions.

    The image is mirror-padded by the network's margin once; each output tile is then
    predicted from its real surrounding context (mirrored only at the image border), so the
    tiles join seamlessly. `tile` is the output tile size; by default the whole image.
    """
    inner = unwrap(model)
    if not (isinstance(inner, SegmentationModel) and inner.supports_overlap_tile):
        raise SeglabError(
            "inference.mode=overlap_tile needs a model with valid convolutions (U-Net with "
            f"padding='valid'); {type(inner).__name__} has none: use mode whole or slide"
        )
    h, w = images.shape[-2:]
    th, tw = tile if tile else (h, w)
    th, tw = min(th, h), min(tw, w)
    in_h, in_w = model.tile_input_size(th), model.tile_input_size(tw)
    out_h, out_w = model.output_size(in_h), model.output_size(in_w)
    margin_h, margin_w = (in_h - out_h) // 2, (in_w - out_w) // 2
    rows, cols = math.ceil(h / out_h), math.ceil(w / out_w)
    padded = mirror_pad(
        images,
        margin_h,
        rows * out_h - h + margin_h,
        margin_w,
        cols * out_w - w + margin_w,
    )
    result = None
    for r in range(rows):
        for c in range(cols):
            y, x = r * out_h, c * out_w
            probs = model.forward_tile(padded[..., y : y + in_h, x : x + in_w]).float().softmax(1)
            if result is None:
                result = images.new_zeros(
                    images.shape[0], probs.shape[1], rows * out_h, cols * out_w
                )
            result[..., y : y + out_h, x : x + out_w] = probs
    return result[..., :h, :w]


def _single_scale(model, images: torch.Tensor, cfg: InferenceConfig) -> torch.Tensor:
    if cfg.mode == "whole":
        return main_logits(model(images)).float().softmax(1)
    if cfg.mode == "slide":
        if not cfg.crop_size:
            raise SeglabError("inference.mode=slide needs inference.crop_size=[H,W]")
        stride = cfg.stride or [max(1, 2 * s // 3) for s in cfg.crop_size]
        return slide_probabilities(model, images, cfg.crop_size, stride, cfg.batch_size)
    if cfg.mode == "overlap_tile":
        return overlap_tile_probabilities(model, images, cfg.crop_size)
    raise SeglabError(f"inference.mode {cfg.mode!r} is not one of: whole, slide, overlap_tile")


@torch.no_grad()
def predict_probabilities(
    model: torch.nn.Module, images: torch.Tensor, cfg: InferenceConfig | None = None
) -> torch.Tensor:
    """(B, 3, H, W) normalised images -> (B, K, H, W) probabilities, averaged over the
    configured scales and (if cfg.flip) horizontal flips."""
    cfg = cfg or InferenceConfig()
    size = images.shape[-2:]
    total = None
    for scale in cfg.scales:
        scaled = images
        if scale != 1.0:
            scaled_size = [max(1, round(s * scale)) for s in size]
            scaled = F.interpolate(images, scaled_size, mode="bilinear", align_corners=False)
        variants = [scaled, scaled.flip(-1)] if cfg.flip else [scaled]
        for flipped, variant in enumerate(variants):
            probs = _single_scale(model, variant, cfg)
            probs = probs.flip(-1) if flipped else probs
            probs = resize_to(probs, size)
            total = probs if total is None else total + probs
    return total.div_(len(cfg.scales) * (2 if cfg.flip else 1))  # in place: no second copy


def as_image_tensor(image) -> torch.Tensor:
    """A path, PIL image, (H, W, 3) or (H, W) array or (3, H, W) tensor -> (3, H, W) uint8.

    Files and PIL images are read as displayed (EXIF orientation applied, 16-bit scaled; see
    seglab/data/images.py), so predict("x.jpg") and predict(Image.open("x.jpg")) agree. Array
    and tensor values are read by seglab.data.images.rgb_uint8, as dense_crf reads them: uint8
    0..255, float 0..1, uint16 0..65535; anything else (a float in 0..255, a normalised image,
    int64, bool) is a one-line SeglabError.
    """
    if isinstance(image, str | Path):
        image = read_image(Path(image))
    if isinstance(image, Image.Image):
        image = rgb_array(image)
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3:
            raise SeglabError(f"expected an (H, W, 3) image array, got shape {image.shape}")
        image = torch.from_numpy(rgb_uint8(image, "Segmenter.predict")).permute(2, 0, 1)
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
        raise SeglabError("expected an image path, PIL image, (H, W, 3) array or (3, H, W) tensor")
    return rgb_uint8(image, "Segmenter.predict")


class Segmenter:
    """A trained model ready to label images.

    segmenter = Segmenter.from_checkpoint("runs/demo/best.safetensors")
    labels = segmenter.predict("photo.jpg")  # (H, W) uint8 class ids

    device="auto" picks CUDA when torch sees it, else the CPU. crf="deeplab-largefov" (any
    name in seglab.crf.PRESETS) refines every prediction with the dense CRF on the image.
    variant ("auto": BN folded, the device's best layout; "eager"; "fp16"/"bf16" on a GPU) and
    backend ("torch" or "onnxruntime") choose how the model runs (seglab/fast_inference.py);
    `self.variant` describes the one chosen. `self.model` is the seglab model the runner
    runs (the BN-folded copy, not the model as given, which is left unchanged): the Segmenter
    holds one copy of the weights, so from_checkpoint's model memory is not doubled.
    On the CPU, successive calls choose between torch's thread count and one thread by their
    measured time per pixel (seglab/threads.py): beside another busy process one thread
    is the faster; torch's own count is put back after every call.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        classes: ClassInfo | None = None,
        device: str | torch.device = "cpu",
        inference: InferenceConfig | None = None,
        crf: str | None = None,
        variant: str = "auto",
        backend: str = "torch",
    ) -> None:
        channels = getattr(unwrap(model), "seglab_spec", {}).get("in_channels", 3)
        self.takes_depth = "depth" in getattr(unwrap(model), "inputs", ("image",))
        if channels != 3 + self.takes_depth:
            raise SeglabError(
                f"Segmenter feeds RGB images{' + depth' * self.takes_depth} but this model takes "
                f"{channels} input channels; build it with in_channels={3 + self.takes_depth}, "
                "or call the model on your own tensors"
            )
        self.device = resolve_device(device)
        self.runner, self.variant = prepare_for_inference(
            model.to(self.device).eval(), self.device, variant, backend
        )
        self.model = unwrap(self.runner)  # not `model`: keeping both would double the memory
        self.classes = classes
        self.inference = inference or InferenceConfig()
        self.crf = self.check_crf_preset(crf)
        enabled = adaptive_threads_enabled(self.device) and backend == "torch"
        self.threads = AdaptiveThreads(enabled=enabled)

    def with_options(self, inference: InferenceConfig, crf: str | None) -> Segmenter:
        """A Segmenter with other inference settings or CRF that shares this one's prepared
        model (no second copy of the weights, no second preparation)."""
        other = copy.copy(self)
        other.inference = inference
        other.crf = self.check_crf_preset(crf)
        return other

    @staticmethod
    def check_crf_preset(crf: str | None) -> str | None:
        """The preset name if seglab.crf knows it; None means no CRF."""
        if crf is None:
            return None
        try:
            from seglab.crf import PRESETS
        except ImportError as error:
            raise SeglabError(
                f"crf={crf!r} needs seglab.crf, which fails to import: {error}"
            ) from None
        if crf not in PRESETS:
            raise SeglabError(f"unknown CRF preset {crf!r}; choose from {', '.join(PRESETS)}")
        return crf

    def refine_with_crf(self, probs: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """(B, K, H, W) probabilities, (B, 3, H, W) uint8 images -> CRF marginals, same shape."""
        from seglab.crf import dense_crf

        return dense_crf(probs, images.to(probs.device), preset=self.crf)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        inference: InferenceConfig | None = None,
        crf: str | None = None,
        variant: str = "auto",
        backend: str = "torch",
    ) -> Segmenter:
        """`path`: a weights file, or a run directory (its best.safetensors)."""
        from seglab.runs import resolve_weights
        from seglab.weights import load_weights

        model, meta = load_weights(resolve_weights(path))
        classes = None
        if "classes" in meta:
            classes = ClassInfo(
                [c["name"] for c in meta["classes"]], [tuple(c["color"]) for c in meta["classes"]]
            )
        return cls(model, classes, device, inference, crf=crf, variant=variant, backend=backend)

    @property
    def num_classes(self) -> int:
        return self.model.seglab_spec["num_classes"]

    def predict_batch(
        self, images: Sequence, probabilities: bool = False, depths: Sequence | None = None
    ) -> list[np.ndarray]:
        """Label several images; same-size images share a forward pass. An RGB-D model needs
        `depths`: one (H, W) array of metres per image (seglab/data/depth.py)."""
        tensors = [as_image_tensor(image) for image in images]
        depth_maps = self._depth_maps(tensors, depths)
        results: list[np.ndarray | None] = [None] * len(tensors)
        by_size: dict[tuple[int, int], list[int]] = {}
        for index, tensor in enumerate(tensors):
            by_size.setdefault(tuple(tensor.shape[-2:]), []).append(index)
        for indices in by_size.values():
            for start in range(0, len(indices), self.inference.batch_size):
                chunk = indices[start : start + self.inference.batch_size]
                batch = torch.stack([tensors[i] for i in chunk]).to(self.device)
                inputs = normalize_image(batch)
                if depth_maps is not None:
                    depth = torch.stack([depth_maps[i] for i in chunk]).to(self.device)
                    inputs = torch.cat([inputs, normalize_depth(depth)[:, None]], dim=1)
                probs = self._timed_forward(inputs, batch)
                for i, prob in zip(chunk, probs, strict=True):
                    results[i] = (
                        np.ascontiguousarray(prob.cpu().numpy())  # the CRF's are channels-last
                        if probabilities
                        else prob.argmax(0).to(torch.uint8).cpu().numpy()
                    )
        return results

    def _timed_forward(self, inputs: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) normalised inputs, (B, 3, H, W) uint8 images -> (B, K, H, W)
        probabilities (CRF-refined if asked), at the thread count self.threads chooses."""
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads.current)
        started = perf_counter()
        try:
            with torch.inference_mode():
                probs = predict_probabilities(self.runner, inputs, self.inference)
                if self.crf:
                    probs = self.refine_with_crf(probs, images)
            self.threads.record((perf_counter() - started) / inputs[:, 0].numel())
        finally:
            torch.set_num_threads(before)
        return probs

    def _depth_maps(self, tensors: list[torch.Tensor], depths) -> list[torch.Tensor] | None:
        if not self.takes_depth:
            if depths is not None:
                raise SeglabError("this model takes no depth; call predict without depth")
            return None
        if depths is None or len(depths) != len(tensors):
            raise SeglabError("this RGB-D model needs one depth map (metres) per image: depth=")
        maps = [as_depth_tensor(d) for d in depths]
        for image, depth in zip(tensors, maps, strict=True):
            if tuple(depth.shape) != tuple(image.shape[-2:]):
                raise SeglabError(f"depth {tuple(depth.shape)} != image {tuple(image.shape[-2:])}")
        return maps

    def predict(self, image, probabilities: bool = False, depth=None) -> np.ndarray:
        """(H, W) uint8 labels, or (K, H, W) float probabilities if asked; `depth`: (H, W)
        metres, for an RGB-D model."""
        depths = None if depth is None else [depth]
        return self.predict_batch([image], probabilities, depths)[0]
