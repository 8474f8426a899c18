"""Fully connected CRF post-processing: the dense CRF on the permutohedral lattice and ConvCRF.

Kraehenbuehl, Koltun, NIPS 2011 (dense.py), with Adams, Baek, Davis, Eurographics 2010
(lattice.py); Teichmann, Cipolla, "Convolutional CRFs for Semantic Segmentation", BMVC 2019
(convcrf.py). All take (B, K, H, W) scores and (B, 3, H, W) images and return (B, K, H, W)
probabilities on the inputs' device.
"""

from seglab.crf.convcrf import conv_crf
from seglab.crf.dense import dense_crf, dense_crf_labels
from seglab.crf.params import PRESETS, DenseCRFParams, resolve_params

__all__ = [
    "PRESETS",
    "DenseCRFParams",
    "conv_crf",
    "dense_crf",
    "dense_crf_labels",
    "resolve_params",
]
