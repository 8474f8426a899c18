"""Parameters of the fully connected CRF and the published sets of them.

Kraehenbuehl, Koltun, "Efficient Inference in Fully Connected CRFs with Gaussian Edge
Potentials", NIPS 2011. The pairwise kernel between pixels i and j is

    w1 exp(-|pi - pj|^2 / (2 theta_alpha^2) - |Ii - Ij|^2 / (2 theta_beta^2))   (appearance)
  + w2 exp(-|pi - pj|^2 / (2 theta_gamma^2))                                    (smoothness)

with positions p in pixels and colours I in 0..255.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from seglab.errors import SeglabError

__all__ = ["PRESETS", "DenseCRFParams", "resolve_params"]


@dataclass(frozen=True)
class DenseCRFParams:
    """Weights and standard deviations of the two Gaussian kernels, and the mean-field steps.

    Attributes:
        w1: weight of the appearance (position + colour) kernel.
        theta_alpha: its spatial standard deviation, in pixels.
        theta_beta: its colour standard deviation, in 0..255 intensity units.
        w2: weight of the smoothness (position only) kernel.
        theta_gamma: its spatial standard deviation, in pixels.
        iterations: mean-field iterations.
    """

    w1: float = 4.0
    theta_alpha: float = 121.0
    theta_beta: float = 5.0
    w2: float = 3.0
    theta_gamma: float = 3.0
    iterations: int = 10

    def __post_init__(self) -> None:
        for name in ("theta_alpha", "theta_beta", "theta_gamma"):
            if not getattr(self, name) > 0:
                raise SeglabError(f"CRF parameter {name} must be > 0, got {getattr(self, name)}")
        for name in ("w1", "w2", "iterations"):
            if getattr(self, name) < 0:
                raise SeglabError(f"CRF parameter {name} must be >= 0, got {getattr(self, name)}")


PRESETS: dict[str, DenseCRFParams] = {
    # DeepLab-LargeFOV (Chen et al., ICLR 2015), cross-validated on PASCAL VOC 2012 val.
    "deeplab-largefov": DenseCRFParams(4.0, 121.0, 5.0, 3.0, 3.0, 10),
    # DeepLab v2 with ResNet-101 (Chen et al., TPAMI 2017).
    "deeplab-v2": DenseCRFParams(4.0, 67.0, 3.0, 3.0, 1.0, 10),
    # The values in pydensecrf's README and most code that calls it.
    "pydensecrf": DenseCRFParams(10.0, 80.0, 13.0, 3.0, 3.0, 10),
}


def resolve_params(
    preset: str | DenseCRFParams, iterations: int | None = None, **overrides: float
) -> DenseCRFParams:
    """A preset by name (or a DenseCRFParams), with any field replaced by keyword."""
    if isinstance(preset, DenseCRFParams):
        params = preset
    elif preset in PRESETS:
        params = PRESETS[preset]
    else:
        raise SeglabError(
            f"unknown CRF preset {preset!r}; choose one of: {', '.join(sorted(PRESETS))}"
        )
    known = {f.name for f in fields(DenseCRFParams)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise SeglabError(
            f"unknown CRF parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    if iterations is not None:
        overrides["iterations"] = iterations
    return replace(params, **overrides)
