"""A head start (seglab/head_start.py): model.init_weights and `seglab train --from` load every
tensor whose name and shape match and keep the rest freshly initialised; the README's
fine-tuning recipe (shapes -> a 3-class subset) run at tiny size."""

import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file

from seglab.cli import main
from seglab.errors import SeglabError
from seglab.head_start import load_matching_weights
from seglab.models import create_model
from seglab.weights import save_weights

UNET = {"width": 4, "depth": 2, "padding": "same"}


def differing_names(a: torch.nn.Module, b: torch.nn.Module) -> list[str]:
    """Tensor names of `b` absent from `a` or of another shape there (computed independently)."""
    sa, sb = a.state_dict(), b.state_dict()
    return [k for k in sb if k not in sa or sa[k].shape != sb[k].shape]


def test_new_class_count_reinitialises_only_the_classifier(tmp_path):
    torch.manual_seed(0)
    six = create_model("unet", 6, 3, **UNET)
    path = save_weights(six, tmp_path / "six.safetensors")
    three = create_model("unet", 3, 3, **UNET)
    fresh = {k: v.clone() for k, v in three.state_dict().items()}
    report = load_matching_weights(three, path)
    changed = differing_names(six, three)
    # the classifier's weight (K, C, 1, 1) and bias (K,) are the only tensors sized by K
    assert len(changed) == 2 and all(v.shape[0] == 3 for k, v in fresh.items() if k in changed)
    assert report.reinitialised == changed
    assert len(report.kept) == len(fresh) - 2 and report.unused == []
    state = three.state_dict()
    for name in fresh:
        expected = fresh[name] if name in changed else six.state_dict()[name]
        assert torch.equal(state[name], expected), name
    assert f"kept {len(fresh) - 2} of {len(fresh)} tensors; re-initialised 2 (" in report.message
    assert changed[0] in report.message


def test_weights_of_another_model_are_refused(tmp_path):
    path = save_weights(create_model("unet", 2, 3, **UNET), tmp_path / "w.safetensors")
    other = create_model("unet", 5, 3, width=6, depth=2, padding="same")  # every tensor differs
    with pytest.raises(SeglabError, match="checkpoint does not fit the model: 0 of"):
        load_matching_weights(other, path)
    with pytest.raises(SeglabError, match="does not exist"):
        load_matching_weights(other, tmp_path / "missing.safetensors")


def test_fine_tuning_recipe_end_to_end(shapes_root, tmp_path, capsys):
    # the README recipe: train on shapes, then fine-tune on a 3-class subset of it
    config = tmp_path / "unet_tiny.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "model": {"name": "unet", "options": UNET},
                "data": {"root": str(shapes_root), "batch_size": 4, "hflip": False},
                "train": {"iters": 2, "eval_every": 2, "log_every": 1, "tensorboard": False},
            }
        )
    )
    first = tmp_path / "runs" / "shapes"
    assert main(["--quiet", "train", str(config), f"run_dir={first}"]) == 0

    three = tmp_path / "three"
    three.mkdir()
    for item in ("images", "masks", "train.txt", "val.txt"):
        copy = shutil.copytree if (shapes_root / item).is_dir() else shutil.copy
        copy(shapes_root / item, three / item)
    lines = (shapes_root / "classes.txt").read_text().splitlines()
    (three / "classes.txt").write_text("\n".join(lines[:3]) + "\n")  # background, disc, square
    (three / "label_map.txt").write_text("3 0\n4 0\n5 0\n")  # the other shapes -> background
    capsys.readouterr()
    second = tmp_path / "runs" / "three"
    argv = ["train", str(config), f"data.root={three}", f"run_dir={second}", "--from", str(first)]
    assert main(["--quiet", *argv]) == 0
    out = capsys.readouterr().out
    total = len(load_file(str(first / "best.safetensors")))
    assert f"kept {total - 2} of {total} tensors; re-initialised 2 (" in out
    meta = yaml.safe_load((second / "final.yaml").read_text())
    assert meta["num_classes"] == 3
    before = load_file(str(first / "best.safetensors"))
    after = load_file(str(second / "final.safetensors"))
    resized = [k for k in after if after[k].shape != before[k].shape]
    assert len(resized) == 2 and all(after[k].shape[0] == 3 for k in resized)
    listed = out.split("re-initialised 2 (")[1].split(")")[0].split(", ")
    assert sorted(listed) == sorted(resized)
