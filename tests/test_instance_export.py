"""ONNX export of Mask R-CNN (seglab/instance_export.py) against PyTorch."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnxruntime", reason="ONNX export needs the onnx extra")

from seglab.errors import SeglabError  # noqa: E402
from seglab.models import create_model  # noqa: E402


def _small_model():
    torch.manual_seed(0)
    return create_model("maskrcnn", 4, backbone="resnet18", width=16, min_size=64, max_size=64)


def test_maskrcnn_exports_with_parity_at_two_sizes(tmp_path):
    from seglab.instance_export import export_instance_onnx

    report = export_instance_onnx(
        _small_model(), tmp_path / "m.onnx", size=(64, 64), check_sizes=[(48, 80)]
    )
    assert report["path"].is_file()
    assert [(h, w) for h, w, _, _ in report["checks"]] == [(64, 64), (48, 80)]
    assert all(count > 0 for _, _, count, _ in report["checks"])  # random weights still detect


def test_the_semantic_export_refuses_an_instance_model(tmp_path):
    from seglab.export import export_model_onnx

    with pytest.raises(SeglabError, match="instance model") as error:
        export_model_onnx(_small_model(), tmp_path / "m.onnx")
    assert "\n" not in str(error.value) and not (tmp_path / "m.onnx").exists()
