"""Typed configs: YAML, one level of base, dotted overrides, errors naming the key."""

import pytest

from seglab.config import load_config
from seglab.errors import SeglabError


def test_overrides_are_typed(tmp_path):
    cfg = load_config(
        None,
        ["optim.lr=1e-3", "data.crop_size=[64,48]", "train.amp=true", "model.options.width=16"],
    )
    assert cfg.optim.lr == 0.001 and isinstance(cfg.optim.lr, float)
    assert cfg.data.crop_size == [64, 48]
    assert cfg.train.amp is True
    assert cfg.model.options == {"width": 16}


def test_base_then_file_then_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("optim: {lr: 0.1, momentum: 0.5}\ntrain: {iters: 10}\n")
    (tmp_path / "run.yaml").write_text("base: base.yaml\noptim: {lr: 0.2}\n")
    cfg = load_config(tmp_path / "run.yaml", ["train.iters=7"])
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.train.iters) == (0.2, 0.5, 7)


def test_base_of_a_base_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("train: {iters: 1}\n")
    (tmp_path / "run.yaml").write_text("base: a.yaml\n")
    with pytest.raises(SeglabError, match="cannot have a base itself"):
        load_config(tmp_path / "run.yaml")


@pytest.mark.parametrize(
    "override,message",
    [
        ("optim.lrr=1", "unknown config key 'optim.lrr'"),
        ("train.iters=ten", "config key train.iters: expected int"),
        ("data.crop_size=5", "config key data.crop_size"),
        ("lr", "must look like section.key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(SeglabError, match=message):
        load_config(None, [override])


def test_missing_config_file(tmp_path):
    with pytest.raises(SeglabError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
