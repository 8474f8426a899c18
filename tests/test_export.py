"""ONNX export: every registered model exports and agrees with PyTorch, or refuses clearly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from seglab.cli import main
from seglab.errors import SeglabError
from seglab.export import export_model_onnx, export_onnx
from seglab.models import MODELS, SegmentationModel, create_model
from seglab.weights import save_weights

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

SIZE = (48, 64)  # traced at batch 2, checked at batch 1 at this size and at CHECK_SIZES
# Sides that are no multiple of 2, 4, 8, 16 or 32 and odd at different levels of a stride-32
# network (33: 1/1; 47: 1/1, 1/2, 1/4, 1/8; 38: 1/2, 1/4; 58: 1/2, 1/8, 1/16), so a pad or
# crop that tracing froze at one level of the traced size fails at one of them.
CHECK_SIZES = ((33, 47), (38, 58))
THIRD = (41, 53)  # checked by a fresh session, a size the export never saw


def randomized(model: nn.Module) -> nn.Module:
    """Give zero-initialised layers (FCN's score layers) and BN statistics random values, so
    that agreeing with PyTorch means something: an all-zero output agrees with anything."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            elif name.endswith("running_mean") or not tensor.any():
                tensor.copy_(0.1 * torch.randn(tensor.shape, generator=generator))
    return model


def write_weights(tmp_path, name: str, num_classes: int = 3, **options):
    """Small weights of a registered model with its default input channels (U-Net's 1,
    ACNet's RGB + depth 4)."""
    torch.manual_seed(0)
    options = {**MODELS[name].small_options, **options}
    model = randomized(create_model(name, num_classes=num_classes, **options))
    return save_weights(model, tmp_path / f"{name}.safetensors"), model


SEMANTIC = sorted(name for name, info in MODELS.items() if info.cls.task == "semantic")
CASES = [(name, {}) for name in SEMANTIC] + [("unet", {"padding": "same"})]
# Fixed-size exports with a dynamic batch go through dynamo (TorchScript cannot): 15-30 s each.
DYNAMO_EXPORTS = {"pspnet", "segnet", "unet"}


@pytest.mark.parametrize(
    "name, options",
    [
        pytest.param(
            name,
            options,
            id=name + "".join(f"-{v}" for v in options.values()),
            marks=[pytest.mark.slow] if name in DYNAMO_EXPORTS and not options else [],
        )
        for name, options in CASES
    ],
)
def test_every_model_exports_dynamic_with_parity_or_fixed_with_its_declared_reason(
    name, options, tmp_path
):
    weights, model = write_weights(tmp_path, name, **options)
    declared = model.export_fixed_size if isinstance(model, SegmentationModel) else None
    c = model.seglab_spec["in_channels"]
    out = tmp_path / f"{name}.onnx"
    report = export_onnx(weights, out, size=SIZE, check_sizes=CHECK_SIZES)
    assert out.is_file() and report.path == out
    # float32 rounding grows with the logits, so the limit is relative to their scale
    assert report.max_abs_diff < 1e-4 * max(1.0, report.logit_scale)
    checked_shapes = [shape for shape, _ in report.checks]
    assert report.traced_shape not in checked_shapes, "checked only where it was traced"
    assert "batch" in report.dynamic_axes
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["seglab_model"])["name"] == name
    if declared is None:  # the contract says the graph takes any H and W: it must
        assert report.dynamic_axes == ("batch", "height", "width"), report.notes
        assert report.fixed_size_reason is None and "fixed_size_reason" not in meta
        assert checked_shapes == [(1, c, *SIZE)] + [(1, c, *s) for s in CHECK_SIZES]
        h, w = THIRD
    else:  # fixed at SIZE, checked at two other batch sizes, the reason said and recorded
        assert report.dynamic_axes == ("batch",)
        assert report.fixed_size_reason == declared == meta["fixed_size_reason"]
        assert "\n" not in declared and declared in report.summary()
        assert checked_shapes == [(1, c, *SIZE), (3, c, *SIZE)]
        h, w = SIZE
    # The file stands on its own: a fresh session agrees with PyTorch on a new shape.
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    image = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(2))
    logits = session.run(None, {"image": image.numpy()})[0]
    with torch.no_grad():
        expected = model.eval()(image).numpy()
    assert logits.shape == (2, 3, h, w)
    assert np.abs(logits - expected).max() < 1e-4 * max(1.0, np.abs(expected).max())


def test_same_padded_unet_exports_dynamic_and_holds_at_the_sizes_that_broke_it(tmp_path):
    # Depth 4: 100 -> 50 -> 25 -> 12 (odd at 1/4), 375 -> 187 -> 93 (odd at 1/1, 1/2, 1/4),
    # 131 -> 65 (1/1, 1/2); a trace at 64x64 (never odd) once froze the pad out of the graph.
    torch.manual_seed(0)
    model = create_model("unet", 2, 1, width=4, depth=4, padding="same", batch_norm=True)
    model = randomized(model)
    sizes = ((100, 150), (500, 375), (97, 131))
    report = export_model_onnx(model, tmp_path / "unet.onnx", size=(64, 64), check_sizes=sizes)
    assert report.dynamic_axes == ("batch", "height", "width"), report.notes
    assert [shape[2:] for shape, _ in report.checks] == [(64, 64), *sizes]
    assert report.max_abs_diff < 1e-4


@pytest.mark.parametrize("name", sorted(set(MODELS) - set(SEMANTIC)))
def test_instance_model_is_refused_in_one_line(name, tmp_path):
    model = create_model(name, num_classes=3, **MODELS[name].small_options)
    out = tmp_path / "never.onnx"
    with pytest.raises(SeglabError, match=rf"^cannot export {name} to ONNX: it is an instance"):
        export_model_onnx(model, out, size=SIZE)
    assert not out.exists()


class ShapeBranch(nn.Module):
    """Takes a branch for odd widths only: a trace at one size would bake the branch in."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return x + 1 if x.shape[-1] % 2 else x


def test_graph_valid_only_at_traced_parity_falls_back_to_fixed_spatial_size(tmp_path):
    report = export_model_onnx(ShapeBranch(), tmp_path / "branch.onnx", size=(32, 32))
    assert report.dynamic_axes == ("batch",)
    assert report.notes and "height, width" in report.notes[0]
    assert report.fixed_size_reason.startswith("the dynamic graph failed: ")
    assert "at 1x3x97x131" in report.fixed_size_reason, "the first odd check size caught it"
    assert all(shape[2:] == (32, 32) for shape, _ in report.checks)


class SingularValues(nn.Module):
    """Scales by singular values: neither exporter has an ONNX form for an SVD."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.linalg.svdvals(x.mean(1)).sum()


def test_unexportable_model_raises_one_line_error_naming_each_attempt(tmp_path):
    out = tmp_path / "never.onnx"
    with pytest.raises(SeglabError, match=r"^cannot export SingularValues to ONNX: ") as info:
        export_model_onnx(SingularValues(), out, size=(16, 16))
    message = str(info.value)
    assert "\n" not in message and "svd" in message and "nothing was written" in message
    assert message.count("torchscript with") == 1 and message.count("dynamo with") == 1
    assert list(tmp_path.iterdir()) == [], "no file and no temporary left behind"


def test_cli_export_prints_report_and_bad_checkpoint_is_one_line_error(tmp_path, capsys):
    weights, _ = write_weights(tmp_path, "fcn32s")
    out = tmp_path / "model.onnx"
    args = ["--size", "64x64", "--check-sizes", "33x47"]
    assert main(["export", str(weights), *args, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "dynamic axes: batch, height, width" in printed
    assert "max abs difference" in printed and "1x3x33x47" in printed
    assert main(["export", str(tmp_path / "missing.safetensors")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "missing.safetensors" in error


def test_cli_export_takes_a_run_directory_and_writes_beside_its_best_weights(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    save_weights(create_model("fcn32s", 3, 3, width=8), run / "best.safetensors")
    assert main(["export", str(run), "--size", "32x32", "--check-sizes", "33x47"]) == 0
    assert (run / "best.onnx").is_file() and f"wrote {run / 'best.onnx'}" in capsys.readouterr().out
    assert main(["export", str(tmp_path)]) == 2, "a directory without best.safetensors"
    assert "best.safetensors" in capsys.readouterr().err


def test_static_export_has_fixed_input_shape(tmp_path):
    weights, _ = write_weights(tmp_path, "fcn32s")
    report = export_onnx(weights, tmp_path / "static.onnx", dynamic=False, size=(32, 48))
    assert report.dynamic_axes == () and report.fixed_size_reason is None
    graph_input = onnx.load(str(report.path)).graph.input[0]
    dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert dims == [1, 3, 32, 48]
