"""ONNX export: every registered model exports and agrees with PyTorch, or refuses clearly."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from seglab.cli import main
from seglab.errors import SeglabError
from seglab.export import export_model_onnx, export_onnx
from seglab.models import MODELS, create_model
from seglab.weights import save_weights

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

SIZE = (64, 80)  # traced at 81x101, checked at 64x80 and 49x61: odd, even, non-square


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


def write_weights(tmp_path, name: str, num_classes: int = 3):
    torch.manual_seed(0)
    model = randomized(create_model(name, num_classes=num_classes, **MODELS[name].small_options))
    return save_weights(model, tmp_path / f"{name}.safetensors")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_exports_with_parity_or_refuses_with_one_line_reason(name, tmp_path):
    weights = write_weights(tmp_path, name)
    out = tmp_path / f"{name}.onnx"
    try:
        report = export_onnx(weights, out, size=SIZE)
    except SeglabError as error:
        message = str(error)
        assert message.startswith(f"cannot export {name} to ONNX: ") and "\n" not in message
        assert not out.exists()
        return
    assert out.is_file() and report.path == out
    assert len(report.checks) == 2
    assert report.max_abs_diff < 1e-4
    checked_shapes = {shape for shape, _ in report.checks}
    assert report.traced_shape not in checked_shapes, "checked only where it was traced"
    assert "batch" in report.dynamic_axes
    if "height" in report.dynamic_axes:  # then it was checked at two spatial sizes
        assert len({shape[2:] for shape in checked_shapes}) == 2
    # The file stands on its own: a fresh session on a third shape gives K-channel logits.
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    h, w = (57, 71) if "height" in report.dynamic_axes else SIZE
    logits = session.run(None, {"image": torch.randn(2, 3, h, w).numpy()})[0]
    assert logits.shape == (2, 3, h, w)
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["seglab_model"])["name"] == name


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
    weights = write_weights(tmp_path, "fcn32s")
    out = tmp_path / "model.onnx"
    assert main(["export", str(weights), "--size", "64x64", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "dynamic axes: batch, height, width" in printed
    assert "max abs difference" in printed
    assert main(["export", str(tmp_path / "missing.safetensors")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "weights file not found" in error


def test_static_export_has_fixed_input_shape(tmp_path):
    weights = write_weights(tmp_path, "fcn32s")
    report = export_onnx(weights, tmp_path / "static.onnx", dynamic=False, size=(32, 48))
    assert report.dynamic_axes == ()
    graph_input = onnx.load(str(report.path)).graph.input[0]
    dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert dims == [1, 3, 32, 48]
