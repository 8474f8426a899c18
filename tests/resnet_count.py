"""Parameter counts of ResNet backbones from their layer table, shared by the per-model
parameter tests (not a test module): every conv bias-free, BN = 2 per channel, no fc."""

from __future__ import annotations


def conv(cin: int, cout: int, k: int, bias: bool = False) -> int:
    return cin * cout * k * k + (cout if bias else 0)


def bn(c: int) -> int:
    return 2 * c


def resnet_params(layers: tuple[int, ...], deep_stem: bool = False) -> int:
    """Bottleneck ResNet-50/101 (layers (3, 4, 6, 3) / (3, 4, 23, 3)). deep_stem: three 3x3
    convs 64/s2, 64, 128 (PSPNet, PyTorch-Encoding) instead of one 7x7 64/s2."""
    if deep_stem:
        total, cin = 0, 3
        for c in (64, 64, 128):
            total += conv(cin, c, 3) + bn(c)
            cin = c
    else:
        total, cin = conv(3, 64, 7) + bn(64), 64
    for planes, blocks in zip((64, 128, 256, 512), layers, strict=True):
        for block in range(blocks):
            total += conv(cin, planes, 1) + bn(planes) + conv(planes, planes, 3) + bn(planes)
            total += conv(planes, 4 * planes, 1) + bn(4 * planes)
            if block == 0:  # projection shortcut
                total += conv(cin, 4 * planes, 1) + bn(4 * planes)
            cin = 4 * planes
    return total
