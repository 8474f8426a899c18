"""ONNX export of an instance model (Mask R-CNN), checked against PyTorch.

torchvision's Mask R-CNN exports through the TorchScript exporter (torch.onnx.export with
dynamo=False, opset >= 11; its detection ops have ONNX forms there). The graph takes one
(3, H, W) float image in [0, 1] of any size (it resizes inside) and returns "boxes" (N, 4),
"labels" (N,), "scores" (N,) and "masks" (N, 1, H, W). seglab.export.export_onnx writes
semantic logits graphs and refuses instance models; this is their path.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from seglab.atomic import write_bytes_atomically
from seglab.errors import SeglabError, first_line

OUTPUTS = ("boxes", "labels", "scores", "masks")


def export_instance_onnx(
    model,
    out_path: str | Path,
    size: tuple[int, int] = (512, 512),
    check_sizes: Sequence[tuple[int, int]] = ((480, 640),),
    opset: int = 17,
    atol: float = 1e-3,
) -> dict:
    """Export `model` (eval mode, CPU, float) to `out_path` and compare ONNX Runtime with
    PyTorch on a random image at `size` and at each of `check_sizes` (the graph's H and W are
    dynamic). Returns {"path", "seconds", "checks": [(H, W, detections, max |diff| of
    boxes, scores and mask probabilities)]}; a failure is a SeglabError and writes nothing."""
    import io

    import onnxruntime

    name = model.seglab_spec["name"] if hasattr(model, "seglab_spec") else type(model).__name__
    model = model.float().cpu().eval()
    start = time.perf_counter()
    channels = len(model.transform.image_mean)
    generator = torch.Generator().manual_seed(1)
    example = torch.rand(channels, *size, generator=generator)
    buffer = io.BytesIO()
    try:
        with torch.no_grad():
            torch.onnx.export(
                model,
                ([example],),
                buffer,
                opset_version=opset,
                dynamo=False,  # torchvision's detection models export through TorchScript
                input_names=["image"],
                output_names=list(OUTPUTS),
                dynamic_axes={"image": {1: "height", 2: "width"}},
            )
    except Exception as error:  # any exporter failure: one line, nothing written
        reason = first_line(error)
        raise SeglabError(f"cannot export {name} to ONNX ({reason}); nothing was written") from None
    data = buffer.getvalue()
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # the detection count is data-dependent: shape warnings
    session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    checks = []
    for height, width in [tuple(size), *check_sizes]:
        image = torch.rand(channels, height, width, generator=generator)
        got = dict(zip(OUTPUTS, session.run(None, {"image": image.numpy()}), strict=True))
        with torch.no_grad():
            expected = {k: v.numpy() for k, v in model([image])[0].items()}
        if got["labels"].shape != expected["labels"].shape or not np.array_equal(
            got["labels"], expected["labels"]
        ):
            raise SeglabError(
                f"cannot export {name} to ONNX: at {height}x{width} ONNX Runtime finds "
                f"{len(got['labels'])} detections, PyTorch {len(expected['labels'])}; "
                "nothing was written"
            )
        diff = max(
            (float(np.abs(got[k] - expected[k]).max()) for k in ("boxes", "scores", "masks")),
            default=0.0,
        ) if len(got["labels"]) else 0.0  # fmt: skip
        if diff > atol * max(1.0, max(height, width) / 100):  # boxes are in pixels
            raise SeglabError(
                f"cannot export {name} to ONNX: outputs differ by {diff:.3g} at "
                f"{height}x{width}; nothing was written"
            )
        checks.append((height, width, len(got["labels"]), diff))
    out_path = Path(out_path)
    write_bytes_atomically(out_path, data)
    return {"path": out_path, "seconds": time.perf_counter() - start, "checks": checks}


__all__ = ["export_instance_onnx"]
