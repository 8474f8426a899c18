"""The Python API for training in one's own loop, as README.md documents it: the README's
example runs as written, and each piece it relies on does what the README says."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import seglab

README = Path(__file__).resolve().parents[1] / "README.md"


def _section_code(heading: str) -> str:
    """The python blocks of the README section under `heading`, joined in order."""
    text = README.read_text()
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + len(heading) + 2)
    section = text[start : end if end != -1 else len(text)]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert blocks, f"no python block under {heading}"
    return "\n".join(blocks)


def test_the_readme_own_loop_example_runs_as_written(tmp_path, monkeypatch, capsys):
    code = _section_code("## Training in your own loop")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    printed = capsys.readouterr().out.splitlines()
    loss, accuracy = re.match(r"loss (\S+), pixel accuracy (\S+)", printed[0]).groups()
    assert math.isfinite(float(loss)) and 0 <= float(accuracy) <= 1
    assert "[step 10] done: best val mIoU " in printed[1] and "at step 10" in printed[1]
    assert (tmp_path / "my_unet.safetensors").is_file() and (tmp_path / "my_unet.yaml").is_file()
    run = tmp_path / "runs" / "own_loop_demo"
    assert {"train.log", "curves.png", "best.yaml", "final.safetensors"} <= {
        p.name for p in run.iterdir()
    }


def test_segmentation_loss_adds_weighted_auxiliary_cross_entropy():
    from seglab.losses import SegmentationLoss

    # Two classes, one labelled pixel of class 1 and one ignored (255).
    target = torch.tensor([[[1, 255]]])
    out = torch.zeros(1, 2, 1, 2)  # equal logits: CE = ln 2
    aux = torch.tensor([[[[0.0, 5.0]], [[math.log(3), -5.0]]]])  # p(class 1) = 3 / (1 + 3)
    loss = SegmentationLoss(aux_weights=(0.4,))({"out": out, "aux": [aux]}, target)
    expected = math.log(2) + 0.4 * -math.log(3 / 4)  # the ignored pixel counts nowhere
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert SegmentationLoss()(out, target).item() == pytest.approx(math.log(2), rel=1e-6)


def test_normalize_image_uses_the_imagenet_mean_and_std():
    from seglab.data.transforms import normalize_image

    white = torch.full((3, 1, 1), 255, dtype=torch.uint8)
    black = torch.zeros((3, 1, 1), dtype=torch.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    expected_white = [(1 - m) / s for m, s in zip(mean, std, strict=True)]
    expected_black = [-m / s for m, s in zip(mean, std, strict=True)]
    assert normalize_image(white).flatten().tolist() == pytest.approx(expected_white, rel=1e-6)
    assert normalize_image(black).flatten().tolist() == pytest.approx(expected_black, rel=1e-6)


def test_seglab_train_takes_a_config_or_a_path_with_overrides(tiny_config, tmp_path):
    from seglab.config import save_config

    assert "train" in seglab.__all__
    run = seglab.train(tiny_config("train.iters=2", "train.eval_every=2"), progress=False)
    assert (run / "final.safetensors").is_file()
    path = tmp_path / "cfg.yaml"
    save_config(tiny_config(), path)
    overrides = [f"run_dir={tmp_path / 'other'}", "train.iters=1", "train.eval_every=1"]
    other = seglab.train(path, overrides, progress=False)
    assert other == tmp_path / "other" and (other / "final.safetensors").is_file()
    with pytest.raises(TypeError, match="overrides go with a config path"):
        seglab.train(tiny_config(), ["train.iters=1"])


def test_import_seglab_stays_free_of_torch():
    code = "import sys, seglab; seglab.train; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr
