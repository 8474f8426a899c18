"""Benchmark harness: FLOPs against a hand count, BN folding, report fields (never timings)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seglab.benchmark import (
    benchmark,
    count_batchnorms,
    count_flops,
    eval_path_batchnorms,
    fold_batchnorm,
)
from seglab.cli import main
from seglab.models import MODELS, count_parameters, create_model


class PlainConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.act = nn.ReLU()
        self.classifier = nn.Conv2d(8, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.act(self.conv(x)))


def test_flops_of_plain_conv_net_equal_hand_count():
    # 2 FLOPs per multiply-accumulate; biases and ReLU are not counted.
    conv3x3 = 2 * (32 * 32 * 8) * (3 * 3 * 3)  # output pixels x channels, x kernel volume
    conv1x1 = 2 * (32 * 32 * 2) * 8
    assert count_flops(PlainConvNet(), (32, 32)) == conv3x3 + conv1x1 == 475_136
    assert count_flops(PlainConvNet(), (32, 32), batch=3) == 3 * 475_136


def with_random_bn_statistics(model: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(0.2 * torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            with torch.no_grad():
                module.weight.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
                module.bias.copy_(0.1 * torch.randn(module.num_features, generator=generator))
    return model.eval()


@pytest.mark.parametrize(
    "name, options",
    [
        ("deeplabv3plus", {}),
        ("deeplabv3plus", {"encoder": "mobilenetv2_100", "output_stride": 16}),
        ("segnet", {}),
    ],
    ids=["deeplabv3plus-resnet18", "deeplabv3plus-mobilenetv2 (timm BatchNormAct2d)", "segnet"],
)
def test_fold_batchnorm_removes_every_bn_and_keeps_outputs(name, options):
    if name not in MODELS:
        pytest.skip(f"{name} is not registered")
    torch.manual_seed(0)
    options = options or MODELS[name].small_options
    model = with_random_bn_statistics(create_model(name, num_classes=3, **options))
    folded = fold_batchnorm(model)
    assert count_batchnorms(model) > 0 and count_batchnorms(folded) == 0
    x = torch.randn(2, 3, 67, 75)
    with torch.no_grad():
        expected, got = model(x), folded(x)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)
    assert count_batchnorms(model) > 0, "the original model is left as it was"


@pytest.mark.parametrize(
    "name, unfoldable", [("bisenet", 0), ("bisenet_r18", 0), ("dfanet", 0), ("lednet", 3)]
)
def test_fold_batchnorm_of_the_real_time_models(name, unfoldable):
    """Every BN an eval forward runs follows a conv that nothing else reads, except LEDNet's
    three downsampler BNs (Down 3->32, 32->64, 64->128), which normalise concat(conv, max-pool):
    the pooled half has no conv to fold into. BiSeNet's two auxiliary-head BNs only run in a
    training forward, so they are not counted (and `seglab benchmark` says so in its note)."""
    torch.manual_seed(0)
    model = with_random_bn_statistics(create_model(name, 3, **MODELS[name].small_options))
    x = torch.randn(2, 3, 64, 96)
    folded = fold_batchnorm(model, x[:1])
    assert eval_path_batchnorms(model, x[:1]) > 10
    assert eval_path_batchnorms(folded, x[:1]) == unfoldable
    with torch.no_grad():
        expected, got = model(x), folded(x)
    torch.testing.assert_close(got, expected, atol=1e-4 * max(1.0, expected.abs().max()), rtol=0)


class SharedConvOutput(nn.Module):
    """conv1's output feeds BN and also the residual; conv2's output is changed in place."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv3, self.bn3 = nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        z = self.conv2(self.bn1(y) + y)
        z += 1  # in place: bn2 does not see conv2's output any more
        return self.bn3(self.conv3(self.bn2(z)))


def test_fold_batchnorm_leaves_bn_whose_conv_output_is_read_elsewhere_or_changed():
    model = with_random_bn_statistics(SharedConvOutput())
    folded = fold_batchnorm(model)
    assert isinstance(folded.bn1, nn.BatchNorm2d), "conv1's raw output also feeds the residual"
    assert isinstance(folded.bn2, nn.BatchNorm2d), "an in-place change between conv2 and bn2"
    assert isinstance(folded.bn3, nn.Identity) and folded.conv3.bias is not None
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5)


def test_fold_batchnorm_keeps_the_activation_of_timm_batchnorm_act():
    from timm.layers import BatchNormAct2d

    model = nn.Sequential(nn.Conv2d(3, 4, 3), BatchNormAct2d(4, act_layer=nn.ReLU6))
    model = with_random_bn_statistics(model)
    folded = fold_batchnorm(model)
    assert count_batchnorms(folded) == 0 and isinstance(folded[1][1], nn.ReLU6)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(folded(x), model(x), atol=1e-5)


def test_benchmark_reports_sane_fields():
    model = create_model(
        "unet", num_classes=3, in_channels=3, width=4, depth=2, padding="same", batch_norm=True
    )
    variants = ("eager", "channels_last", "bn_folded", "onnxruntime")
    report = benchmark(model, size=(32, 48), batch=2, repeats=3, warmup=1, variants=variants)
    assert report["parameters"] == count_parameters(model)
    assert report["gflops"] == pytest.approx(count_flops(model, (32, 48)) / 1e9)
    assert report["gflops"] > 0 and report["input"] == [2, 3, 32, 48]
    assert list(report["variants"]) == list(variants)
    for name, result in report["variants"].items():
        if name == "onnxruntime" and "error" in result:
            pytest.importorskip("onnxruntime")  # missing extra: an error entry, not a crash
            raise AssertionError(result["error"])
        latency = result["latency_ms"]
        assert 0 < latency["p10"] <= latency["median"] <= latency["p90"]
        assert latency["iqr"] >= 0
        assert result["images_per_s"] == pytest.approx(2000 / latency["median"])
        assert result["peak_memory_mb"] >= 0
        assert result["max_abs_diff"] < 1e-4
    assert report["variants"]["bn_folded"]["note"].startswith("10 of 10 BN folded")


def test_cli_benchmark_prints_table_and_rejects_unknown_variant(capsys):
    args = ["benchmark", "fcn32s", "--small", "--size", "32x32", "--repeats", "2", "--warmup"]
    assert main([*args, "1", "--variants", "eager,bn_folded"]) == 0
    printed = capsys.readouterr().out
    assert "GFLOPs per image" in printed and "| bn_folded |" in printed
    assert main([*args, "1", "--variants", "eager,turbo"]) == 2
    assert "unknown variant 'turbo'" in capsys.readouterr().err


def test_cli_benchmark_takes_a_run_directory(tmp_path, capsys):
    from seglab.weights import save_weights

    run = tmp_path / "run"
    run.mkdir()
    save_weights(create_model("fcn32s", 3, 3, width=8), run / "best.safetensors")
    args = ["benchmark", str(run), "--size", "32x32", "--repeats", "1", "--warmup", "1"]
    assert main(args) == 0
    assert capsys.readouterr().out.startswith("fcn32s {'width': 8}: ")
    assert main(["benchmark", str(tmp_path / "nothing")]) == 2
    assert "nothing" in capsys.readouterr().err


def test_benchmark_uses_only_public_names_of_other_seglab_modules():
    import ast
    import inspect

    import seglab.benchmark

    tree = ast.parse(inspect.getsource(seglab.benchmark))
    private = [
        f"{node.module}.{alias.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("seglab")
        for alias in node.names
        if alias.name.startswith("_")
    ]
    assert private == []


def test_realtime_table_writer_on_fake_rows(tmp_path):
    """benchmarks/realtime.py's section: one table per size, best images/s = 1000 / the
    fastest variant's ms (here onnxruntime's 250 ms -> 4.00), the reason and fused columns only
    where measured, failed variants named; written through results_file's one-section writer."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import realtime
    from results_file import write_section

    def row(model, size, ms, reason="", fused=None):
        return {"model": model, "size": size, "parameters": 1_500_000, "gflops": 3.25,
                "ms": ms, "max_abs_diff": 2e-6, "reason": reason, "fused_ms": fused}  # fmt: skip

    times = {"eager": 400.0, "channels_last": 300.0, "bn_folded": 350.0, "onnxruntime": 250.0}
    rows = [
        row("lraspp", (512, 1024), times),
        row("dfanet", (512, 1024), {**times, "onnxruntime": None}, "90% grouped", 280.0),
        row("bisenet", (768, 1536), times),
    ]
    rows[1]["errors"] = ["onnxruntime: RuntimeError: boom"]
    setup = {"threads": 1, "repeats": 1, "warmup": 1, "machine": "x", "torch": "t", "command": "c"}
    section = realtime.format_section(rows, setup)
    lines = section.splitlines()
    assert lines[0] == realtime.HEADING
    assert "### 512x1024" in lines and "### 768x1536 (BiSeNet's speed protocol)" in lines
    assert "| lraspp | 1.50 M | 3.2 | 400 | 300 | 350 | 250 | 4.00 | 2e-06 | - | - |" in lines
    # dfanet's fastest timed variant is channels_last (300 ms): 3.33 images/s
    assert (
        "| dfanet | 1.50 M | 3.2 | 400 | 300 | 350 | failed | 3.33 | 2e-06 | 280 | 90% grouped |"
        in lines
    )
    assert "dfanet (512, 1024): onnxruntime: RuntimeError: boom" in section
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Other\n\nkept\n")
    write_section(realtime.HEADING, section, results)
    write_section(realtime.HEADING, section, results)  # rewritten in place, not appended
    text = results.read_text()
    assert text.count(realtime.HEADING) == 1 and "## Other\n\nkept" in text
