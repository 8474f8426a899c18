"""Shared fixtures: a tiny shapes dataset and a fast training config."""

from __future__ import annotations

import pytest
import torch

from seglab.config import load_config
from seglab.data.shapes import write_shapes_dataset

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    """24 train + 8 val scenes of 32x32, written once per test session."""
    return write_shapes_dataset(tmp_path_factory.mktemp("shapes"), train=24, val=8, size=32)


@pytest.fixture
def tiny_config(shapes_root, tmp_path):
    """A config that trains a width-4 U-Net for a few steps in well under a second per step."""

    def make(*overrides: str):
        return load_config(
            None,
            [
                f"data.root={shapes_root}",
                f"run_dir={tmp_path / 'run'}",
                "model.name=unet",
                "model.options={width: 4, depth: 2, padding: same, batch_norm: true, dropout: 0.2}",
                "data.batch_size=4",
                "data.crop_size=[24,24]",
                "data.scale_range=[0.8,1.2]",
                "optim.lr=0.01",
                "train.iters=6",
                "train.eval_every=3",
                "train.log_every=1",
                "train.checkpoint_every=2",
                *overrides,
            ],
        )

    return make
