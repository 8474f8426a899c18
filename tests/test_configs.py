"""Every recipe in configs/ loads as a typed config and builds its model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from seglab.config import load_config
from seglab.models import create_model

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))
# Class counts of the datasets the recipes name (the model's only dataset-dependent option).
NUM_CLASSES = {"voc": 21, "cityscapes": 19, "camvid": 11, "ade20k": 150, "folder": 6}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_loads_and_its_model_builds(path):
    cfg = load_config(path)
    # pretrained weights cannot be downloaded here; everything else is the recipe's
    options = {k: v for k, v in cfg.model.options.items() if k != "pretrained"}
    with torch.device("meta"):  # shapes only: no memory, no init cost
        model = create_model(cfg.model.name, NUM_CLASSES[cfg.data.format], **options)
    assert sum(p.numel() for p in model.parameters()) > 0
