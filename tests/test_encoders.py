"""The Encoder contract: declared channels and strides match the maps a forward returns."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

from seglab.encoders import TimmEncoder, build_encoder
from seglab.errors import SeglabError

# (name, extra build_encoder options); small models keep the whole matrix to seconds.
ENCODERS = [
    ("vgg16", {"width": 8}),
    ("resnet18", {}),
    ("resnet50", {}),
    ("mobilenetv2_100", {}),
    ("xception65", {}),
]
SIZE = 64


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize(("name", "options"), ENCODERS, ids=[e[0] for e in ENCODERS])
def test_declared_channels_and_strides_match_outputs(name, options, output_stride):
    encoder = build_encoder(name, output_stride=output_stride, **options).eval()
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, SIZE, SIZE))
    assert [f.shape[1] for f in features] == encoder.channels
    assert [SIZE // f.shape[-1] for f in features] == encoder.strides
    assert max(encoder.strides) == output_stride  # dilation keeps the rest at output_stride


def test_odd_input_sizes_give_about_input_over_stride():
    encoder = build_encoder("resnet18", output_stride=8).eval()
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, 65, 97))
    for feature, stride in zip(features, encoder.strides, strict=True):
        assert abs(feature.shape[-2] - 65 / stride) <= 1
        assert abs(feature.shape[-1] - 97 / stride) <= 1


def test_in_channels_is_passed_to_the_first_conv():
    encoder = build_encoder("resnet18", in_channels=1).eval()
    assert encoder(torch.randn(1, 1, 64, 64))[0].shape[1] == encoder.channels[0]


def _dilations(stage: nn.Module) -> list[int]:
    return [
        m.dilation[0]
        for m in stage.modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
    ]


@pytest.mark.parametrize(("output_stride", "expected"), [(16, [2, 4, 8]), (8, [4, 8, 16])])
def test_multi_grid_multiplies_the_last_stage_rate(output_stride, expected):
    # DeepLab v3: block4 rates = unit rate (2 at OS 16, 4 at OS 8) x (1, 2, 4)
    encoder = TimmEncoder("resnet50", output_stride=output_stride, multi_grid=(1, 2, 4)).eval()
    assert _dilations(encoder.model.layer4) == expected
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, 64, 64))
    assert features[-1].shape[-1] == 64 // output_stride


def test_multi_grid_needs_one_rate_per_block():
    with pytest.raises(ValueError, match="one rate per block"):
        TimmEncoder("resnet50", output_stride=16, multi_grid=(1, 2))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_pretrained_path_loads_the_file_weights(tmp_path, suffix):
    reference = timm.create_model("resnet18")
    with torch.no_grad():  # distinct from any init: a load that silently failed shows
        for parameter in reference.parameters():
            parameter.add_(1.0)
    path = tmp_path / f"resnet18{suffix}"
    state = reference.state_dict()
    if suffix == ".pth":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    encoder = build_encoder("resnet18", output_stride=8, pretrained=path)
    loaded = encoder.model.state_dict()
    assert set(loaded) == {k for k in state if not k.startswith("fc.")}
    for key, value in loaded.items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)


def test_pretrained_path_loads_vgg16_torchvision_layout(tmp_path):
    from torchvision.models import vgg16

    reference = vgg16(weights=None)
    path = tmp_path / "vgg16.pth"
    torch.save(reference.state_dict(), path)
    encoder = build_encoder("vgg16", output_stride=8, pretrained=path)
    torch.testing.assert_close(encoder.conv5_3.conv.weight, reference.features[28].weight)
    torch.testing.assert_close(encoder.conv1_1.conv.bias, reference.features[0].bias)


def test_missing_pretrained_file_is_a_clear_error(tmp_path):
    with pytest.raises(SeglabError, match=r"nothing\.pth"):
        build_encoder("resnet18", pretrained=tmp_path / "nothing.pth")


def test_taps_are_placed_by_stride_and_survive_deepcopy():
    import copy

    encoder = TimmEncoder("mobilenetv2_100", output_stride=16, taps=["blocks.2.0"]).eval()
    assert encoder.channels == [16, 24, 32, 32, 96, 320]  # the tap precedes its stage's end
    assert encoder.strides == [2, 4, 8, 8, 16, 16]
    clone = copy.deepcopy(encoder)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features, cloned = encoder(x), clone(x)
    assert [f.shape[1] for f in features] == encoder.channels
    assert [64 // f.shape[-1] for f in features] == encoder.strides
    for a, b in zip(features, cloned, strict=True):
        torch.testing.assert_close(a, b)


# --- pretrained: true without a network (issue 13) --------------------------------------------


@pytest.fixture
def no_network(monkeypatch):
    """Every connection fails at once and nothing is in the weights caches; the calls that
    would download are recorded, so a test sees that no download (and no retry) started."""
    import huggingface_hub
    import torch.hub
    from torchvision.models._api import WeightsEnum

    from seglab.encoders import download

    attempts = {"connect": 0, "download": 0}

    def refuse(*args, **kwargs):
        attempts["connect"] += 1
        raise OSError("[Errno 101] Network is unreachable")

    def download_called(*args, **kwargs):
        attempts["download"] += 1
        raise AssertionError("a download was started")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(download.urllib.request, "getproxies", dict)
    monkeypatch.setattr(download.socket, "create_connection", refuse)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: "/nonexistent-seglab-hub")
    monkeypatch.setattr(WeightsEnum, "get_state_dict", download_called)
    real_create_model = timm.create_model

    def create_model(name, pretrained=False, **kwargs):
        if pretrained:
            download_called()
        return real_create_model(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", create_model)
    return attempts


@pytest.mark.parametrize(
    ("name", "weights"),
    [("resnet18", "timm resnet18 (huggingface.co/timm/resnet18"), ("vgg16", "VGG16_Weights")],
)
def test_pretrained_without_network_is_one_line_before_any_download(no_network, name, weights):
    with pytest.raises(SeglabError) as error:
        build_encoder(name, pretrained=True)
    message = str(error.value)
    assert "\n" not in message and weights in message
    assert "cannot reach" in message and "pretrained=PATH" in message
    assert no_network == {"connect": 1, "download": 0}


def test_segnet_pretrained_without_network_names_vgg16_bn(no_network):
    from seglab.models import create_model

    with pytest.raises(SeglabError, match=r"VGG16_BN_Weights.*pretrained=PATH"):
        create_model("segnet", num_classes=3, width=8, pretrained=True)
    assert no_network["download"] == 0


def test_hf_hub_offline_refuses_uncached_weights_without_connecting(no_network, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SeglabError, match="not cached and HF_HUB_OFFLINE is set"):
        build_encoder("resnet18", pretrained=True)
    assert no_network == {"connect": 0, "download": 0}


def test_a_download_that_fails_after_connecting_is_one_line(no_network, monkeypatch):
    from urllib.error import URLError

    from seglab.encoders import download

    class Connection:
        def close(self) -> None:
            pass

    def fails(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(download.socket, "create_connection", lambda *a, **k: Connection())
    monkeypatch.setattr(timm, "create_model", fails)
    with pytest.raises(SeglabError) as error:
        build_encoder("resnet18", pretrained=True)
    message = str(error.value)
    assert "\n" not in message
    assert "cannot download the pretrained weights timm resnet18" in message
    assert "Temporary failure in name resolution" in message and "pretrained=PATH" in message
