"""eval and predict read a run's inference settings the same way; command-line options override
only themselves; bad option values and unreadable images are one-line errors with status 2."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from seglab.cli import main

# labelId of Cityscapes train ids 0..18 (cityscapesScripts' labels.py: road=7 ... bicycle=33).
CITYSCAPES_LABEL_IDS = {7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-step width-4 U-Net run on 24x24 shapes whose config says flip + scales [0.5, 1]."""
    from seglab.config import load_config
    from seglab.data.shapes import write_shapes_dataset
    from seglab.engine.trainer import train

    root = tmp_path_factory.mktemp("inference_run")
    data = write_shapes_dataset(root / "shapes", 4, 2, 24, progress=False)
    cfg = load_config(
        None,
        [
            f"data.root={data}",
            f"run_dir={root / 'run'}",
            "model.options={width: 4, depth: 2, padding: same, batch_norm: true}",
            "data.batch_size=2",
            "train.iters=2",
            "train.eval_every=2",
            "inference.flip=true",
            "inference.scales=[0.5, 1.0]",
        ],
    )
    return train(cfg, progress=False)


def _protocol(report_dir) -> dict[str, str]:
    lines = (report_dir / "report.md").read_text().splitlines()
    return dict(line[2:].split(": ", 1) for line in lines if line.startswith("- ") and ": " in line)


def _spy_on_segmenter(monkeypatch) -> list:
    """Record the InferenceConfig every Segmenter.from_checkpoint receives."""
    from seglab.inference import Segmenter

    seen = []
    original = Segmenter.from_checkpoint.__func__

    def spy(cls, path, device="cpu", inference=None, crf=None, *speed):
        seen.append(inference)
        return original(cls, path, device, inference, crf, *speed)

    monkeypatch.setattr(Segmenter, "from_checkpoint", classmethod(spy))
    return seen


def test_an_inference_option_replaces_only_itself_in_eval_and_predict(run, tmp_path, monkeypatch):
    # The run's config: flip true, scales [0.5, 1]. --scales 1 replaces the scales; flip stays.
    assert main(["--quiet", "eval", str(run), "--scales", "1", "--out", str(tmp_path / "r")]) == 0
    protocol = _protocol(tmp_path / "r")
    assert protocol["scales"] == "[1.0]" and protocol["flip"] == "True"
    assert protocol["mode"] == "whole"
    # No option: the run's section exactly, for eval and for predict.
    assert main(["--quiet", "eval", str(run), "--out", str(tmp_path / "r2")]) == 0
    protocol = _protocol(tmp_path / "r2")
    assert protocol["scales"] == "[0.5, 1.0]" and protocol["flip"] == "True"

    seen = _spy_on_segmenter(monkeypatch)
    image = run.parent / "shapes" / "images" / "val_00000.png"
    assert main(["--quiet", "predict", str(run), str(image), "--out", str(tmp_path / "p")]) == 0
    assert (seen[-1].scales, seen[-1].flip, seen[-1].mode) == ([0.5, 1.0], True, "whole")
    args = ["--scales", "1", "--out", str(tmp_path / "p2")]
    assert main(["--quiet", "predict", str(run), str(image), *args]) == 0
    assert (seen[-1].scales, seen[-1].flip) == ([1.0], True)
    args = ["--no-flip", "--mode", "slide", "--crop", "16x12", "--out", str(tmp_path / "p3")]
    assert main(["--quiet", "predict", str(run), str(image), *args]) == 0
    assert (seen[-1].scales, seen[-1].flip, seen[-1].mode, seen[-1].crop_size) == (
        [0.5, 1.0],
        False,
        "slide",
        [16, 12],
    )
    # From Python: a mapping overrides the same way.
    from seglab.predict import predict_files

    result = predict_files(run, [image], tmp_path / "p4", {"flip": False}, progress=False)
    assert len(result.written) == 1 and not result.failed
    assert (seen[-1].scales, seen[-1].flip) == ([0.5, 1.0], False)


def test_final_weights_of_a_run_are_read_with_the_runs_config(run, tmp_path, capsys):
    # No --data: the config.yaml beside final.safetensors names the dataset and the inference.
    out = tmp_path / "report"
    assert main(["--quiet", "eval", str(run / "final.safetensors"), "--out", str(out)]) == 0
    protocol = _protocol(out)
    assert protocol["checkpoint"].endswith("final.safetensors")
    assert protocol["flip"] == "True" and protocol["dataset"].endswith("split val (2 images)")


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--scales", "0.5,abc"], "--scales"),
        (["--scales", "0"], "--scales"),
        (["--mode", "slide", "--crop", "96"], "--crop"),
        (["--crop", "axb"], "--crop"),
        (["--crop", "0x4"], "--crop"),
        (["--crop", "12x"], "--crop"),
        (["--crop", "8x8x3"], "--crop"),
        (["--mode", "slide"], "--crop"),  # the run's config has no window
        (["--mode", "slide", "--crop", "2x2"], "--crop"),  # pooled twice: 2 -> 1 -> 0 pixels
    ],
)
def test_bad_inference_options_are_one_line_naming_the_option(run, capsys, args, named):
    assert main(["--quiet", "eval", str(run), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seglab: error:") and err.count("\n") == 1
    assert named in err
    if named == "--crop" and "slide" not in args:
        assert "HxW" in err


def test_bad_crf_search_grid_is_one_line(run, capsys):
    assert main(["--quiet", "crf-search", str(run), "--w1", "3,x"]) == 2
    err = capsys.readouterr().err
    assert "--w1" in err and err.count("\n") == 1


def test_predict_labels_every_readable_image_and_lists_the_others(run, tmp_path, capsys):
    images = tmp_path / "photos"
    (images / "sub").mkdir(parents=True)
    good = np.random.default_rng(0).integers(0, 256, (20, 16, 3), dtype=np.uint8)
    Image.fromarray(good).save(images / "a.png")
    Image.fromarray(good).save(images / "sub" / "b.jpg")
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    full = (images / "a.png").read_bytes()
    (images / "truncated.png").write_bytes(full[: len(full) // 2])
    out = tmp_path / "out"
    assert main(["--quiet", "predict", str(run), str(images), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "wrote 2 label maps" in captured.out
    err = captured.err.splitlines()
    assert err[0] == "seglab: error: 2 image(s) could not be labelled:"
    assert len(err) == 3 and "corrupt.png" in err[1] and "truncated.png" in err[2]
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["labels/a.png", "labels/sub/b.png", "overlays/a.png", "overlays/sub/b.png"]
    assert Image.open(out / "labels" / "a.png").size == (16, 20)


def test_labelids_refuses_a_model_that_is_not_cityscapes(run, tmp_path, capsys):
    out = tmp_path / "out"
    image = run.parent / "shapes" / "images" / "val_00000.png"
    assert main(["predict", str(run), str(image), "--out", str(out), "--labelids"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--labelids" in err and "19 Cityscapes" in err
    assert not out.exists()  # refused before anything is written


def test_labelids_compares_class_names_with_cityscapes(tmp_path, capsys):
    from seglab.data.cityscapes import CITYSCAPES_CLASSES, CITYSCAPES_COLORS
    from seglab.data.folder import ClassInfo
    from seglab.models import create_model
    from seglab.weights import save_weights

    image = tmp_path / "street.png"
    Image.fromarray(np.full((12, 16, 3), 90, np.uint8)).save(image)
    model = create_model("unet", num_classes=19, in_channels=3, width=4, depth=2, padding="same")
    cityscapes = save_weights(
        model, tmp_path / "cs.safetensors", ClassInfo(list(CITYSCAPES_CLASSES), CITYSCAPES_COLORS)
    )
    assert main(["--quiet", "predict", str(cityscapes), str(image), "--out", str(tmp_path / "o")]
                + ["--labelids"]) == 0  # fmt: skip
    ids = Image.open(tmp_path / "o" / "labels" / "street.png")
    assert ids.mode == "L" and set(np.unique(np.array(ids))) <= CITYSCAPES_LABEL_IDS
    # 19 classes of other names are not Cityscapes train ids.
    names = [f"class{i}" for i in range(19)]
    other = save_weights(model, tmp_path / "other.safetensors", ClassInfo(names, CITYSCAPES_COLORS))
    out = tmp_path / "o2"
    assert main(["predict", str(other), str(image), "--out", str(out), "--labelids"]) == 2
    assert "not the 19 Cityscapes train ids" in capsys.readouterr().err
    assert not out.exists()
