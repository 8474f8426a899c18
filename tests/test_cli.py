"""The `seglab` command end to end on a tiny dataset, and its one-line errors."""

from __future__ import annotations

import numpy as np
from PIL import Image

from seglab.cli import main


def _tiny_config(tmp_path, data, batch_size: int):
    """A 2-step width-4 U-Net run on `data`, written to tmp_path/run; returns the YAML path."""
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "model: {name: unet, options: {width: 4, depth: 2, padding: same, batch_norm: true}}\n"
        f"data: {{root: {data}, batch_size: {batch_size}}}\n"
        "train: {iters: 2, eval_every: 2, log_every: 1}\n"
        f"run_dir: {tmp_path / 'run'}\n"
    )
    return config


def test_data_shapes_train_eval_predict(tmp_path, capsys):
    data = tmp_path / "shapes"
    assert (
        main(["--quiet", "data", "shapes", str(data), "--train", "8", "--val", "4", "--size", "24"])
        == 0
    )
    assert main(["--quiet", "data", "check", str(data)]) == 0
    assert "val: 4 images, 6 classes" in capsys.readouterr().out
    config = _tiny_config(tmp_path, data, batch_size=4)
    assert main(["--quiet", "train", str(config), "optim.lr=0.05"]) == 0
    assert main(["--quiet", "eval", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "mIoU" in out
    report = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "| 3 | triangle |" in report and "## Protocol" in report
    assert (tmp_path / "run" / "report" / "confusion_matrix.png").is_file()
    assert len(list((tmp_path / "run" / "report" / "overlays").glob("*.png"))) == 4
    assert (
        main(
            [
                "--quiet",
                "predict",
                str(tmp_path / "run"),
                str(data / "images"),
                "--out",
                str(tmp_path / "pred"),
            ]
        )
        == 0
    )
    labels = sorted((tmp_path / "pred" / "labels").glob("*.png"))
    assert len(labels) == 12
    mask = Image.open(labels[0])
    assert mask.mode == "P" and mask.size == (24, 24)
    assert np.array(mask).max() < 6
    assert main(["models"]) == 0
    assert "fcn8s" in capsys.readouterr().out


def test_user_errors_are_one_line_with_status_2(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "missing.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seglab: error:") and err.count("\n") == 1
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_checkpoint_for_a_different_model_is_refused(tmp_path, capsys):
    import torch

    from seglab.errors import SeglabError
    from seglab.models import create_model
    from seglab.weights import load_weights, save_weights, weights_meta_path

    path = tmp_path / "w.safetensors"
    save_weights(create_model("unet", num_classes=3, width=4, depth=2), path)
    meta = weights_meta_path(path)
    meta.write_text(meta.read_text().replace("num_classes: 3", "num_classes: 5"))
    try:
        load_weights(path)
    except SeglabError as error:
        assert "does not fit unet with 5 classes" in str(error)
        assert "classifier.weight" in str(error)
    else:
        raise AssertionError("loading 3-class weights as a 5-class model must fail")
    del torch


def test_data_stats_prints_frequencies_and_median_frequency_weights(shapes_root, capsys):
    assert main(["--quiet", "data", "stats", str(shapes_root), "--format", "folder"]) == 0
    out = capsys.readouterr().out
    assert "train: 24 images" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert [row[1] for row in rows] == ["background", "disc", "square", "triangle", "ring", "cross"]
    # Background is the most frequent class, so its median-frequency weight is the smallest.
    weights = [float(row[-1]) for row in rows]
    assert weights[0] == min(weights) and weights[0] < 1


def test_data_check_with_a_release_format_names_the_missing_folder(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path), "--format", "cityscapes"]) == 2
    assert "seglab: error:" in capsys.readouterr().err


def test_eval_with_crf_reports_both_and_crf_search_prints_the_best_setting(tmp_path, capsys):
    import seglab.crf  # noqa: F401  (the CRF is part of the package; no extra needed)

    data = tmp_path / "shapes"
    assert (
        main(["--quiet", "data", "shapes", str(data), "--train", "4", "--val", "3", "--size", "24"])
        == 0
    )
    config = _tiny_config(tmp_path, data, batch_size=2)
    assert main(["--quiet", "train", str(config)]) == 0
    assert main(["--quiet", "eval", str(tmp_path / "run"), "--crf", "deeplab-v2"]) == 0
    out = capsys.readouterr().out
    assert "with CRF (deeplab-v2): mIoU" in out
    report = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "mean IoU with CRF (deeplab-v2)" in report and "- crf: deeplab-v2" in report
    assert (
        main(
            [
                "--quiet",
                "crf-search",
                str(tmp_path / "run"),
                "--images",
                "2",
                "--w1",
                "3,5",
                "--alpha",
                "20",
                "--beta",
                "3",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "network alone: mIoU" in out
    assert len([line for line in out.splitlines() if line.strip().startswith(("3 ", "5 "))]) == 2
    assert "best on 2 images: --crf deeplab-largefov with w1=" in out
    assert (
        main(
            [
                "--quiet",
                "predict",
                str(tmp_path / "run"),
                str(data / "images"),
                "--out",
                str(tmp_path / "pred"),
                "--crf",
                "pydensecrf",
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "pred" / "labels").glob("*.png"))) == 7


def test_models_table_shows_the_papers_parameter_counts(capsys):
    assert main(["models", "--table"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "134,362,751 params" in rows["fcn8s"]  # MODELS.md
    assert "31,030,658 params" in rows["unet"]
    assert "20,505,429 params" in rows["deeplabv1"]
    assert "29,449,355 params" in rows["segnet"]
    assert all("GFLOPs@512x512" in row for row in rows.values())


def test_damaged_weights_description_is_one_line(tmp_path, capsys):
    from seglab.models import create_model
    from seglab.weights import save_weights, weights_meta_path

    path = tmp_path / "w.safetensors"
    save_weights(create_model("unet", num_classes=3, width=4, depth=2), path)
    weights_meta_path(path).write_text("name: [unet\n")
    assert main(["predict", str(path), str(tmp_path), "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "w.yaml: not valid YAML" in err and err.count("\n") == 1


def test_help_imports_no_torch_and_python_m_seglab_runs():
    import subprocess
    import sys

    code = (
        "import sys\nfrom seglab.cli import main\ntry:\n    main(['--help'])\n"
        "except SystemExit:\n    pass\nprint('torch' in sys.modules, 'numpy' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines()[-1] == "False False"
    done = subprocess.run(
        [sys.executable, "-m", "seglab", "--help"], capture_output=True, text=True, check=True
    )
    assert all(name in done.stdout for name in ("predict", "crf-search", "export", "benchmark"))


def test_models_verbose_prints_the_class_signature(capsys):
    import inspect

    from seglab.models import MODELS

    assert main(["models", "-v"]) == 0
    lines = capsys.readouterr().out.splitlines()
    options = lines[[line.split()[0] for line in lines].index("unet") + 1]
    # The class's own defaults (UNet's signature), not a builder's copy.
    unet = inspect.signature(MODELS["unet"].cls).parameters
    assert f"width={unet['width'].default!r}" in options
    assert "num_classes" not in options and "in_channels" not in options


def test_quiet_draws_no_progress_bar_in_any_command(tmp_path, capsys):
    data = tmp_path / "shapes"
    shapes = ["data", "shapes", str(data), "--train", "4", "--val", "2", "--size", "24"]
    assert main(shapes) == 0
    assert "shapes train" in capsys.readouterr().err  # without --quiet the bar is drawn
    config = _tiny_config(tmp_path, data, batch_size=2)
    run, image = str(tmp_path / "run"), str(data / "images" / "val_00000.png")
    demo = ["demo", "--data", str(data), "--out", str(tmp_path / "demo")]
    demo += ["model.options.width=4", "model.options.depth=2", "train.iters=2"]
    demo += ["train.eval_every=2", "data.batch_size=2", "train.threads=1"]
    commands = [
        shapes,
        ["data", "check", str(data)],
        ["data", "stats", str(data)],
        ["train", str(config)],
        ["eval", run, "--crf", "deeplab-v2"],
        ["predict", run, image, "--out", str(tmp_path / "p")],
        ["crf-search", run, "--images", "1", "--w1", "3", "--alpha", "20", "--beta", "3"],
        demo,
        ["models"],
    ]
    for command in commands:
        assert main(["--quiet", *command]) == 0, command
        assert capsys.readouterr().err == "", command


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("seglab: error:") and err.count("\n") == 1, err
    return err


def test_config_mistakes_of_other_toolboxes_users_are_one_line_through_the_cli(
    tmp_path, capsys, monkeypatch
):
    """Issue 13's traceback cases that a config causes: each exits 2 with one line."""
    from seglab.data.shapes import write_shapes_dataset

    data = write_shapes_dataset(tmp_path / "shapes", train=4, val=2, size=24, progress=False)
    config = _tiny_config(tmp_path, data, batch_size=2)
    # What an SMP or MMSegmentation user writes first: the class count among the options.
    assert main(["--quiet", "train", str(config), "model.options.num_classes=3"]) == 2
    assert "model.options.num_classes" in _one_line_error(capsys)
    # pretrained weights without a network: refused at once, not after 47 s of retries.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hub_cache"))
    pretrained = tmp_path / "pretrained.yaml"
    pretrained.write_text(
        config.read_text().replace(
            "{name: unet, options: {width: 4, depth: 2, padding: same, batch_norm: true}}",
            "{name: deeplabv3, options: {encoder: resnet18, pretrained: true}}",
        )
    )
    assert main(["--quiet", "train", str(pretrained), f"run_dir={tmp_path / 'r2'}"]) == 2
    assert "pretrained=PATH" in _one_line_error(capsys)
    # Images of different sizes batched without a crop: a collate RuntimeError before.
    name = (data / "train.txt").read_text().split()[0]
    Image.fromarray(np.zeros((30, 20, 3), np.uint8)).save(data / "images" / f"{name}.png")
    Image.fromarray(np.zeros((30, 20), np.uint8)).save(data / "masks" / f"{name}.png")
    assert main(["--quiet", "train", str(config), f"run_dir={tmp_path / 'r3'}"]) == 2
    assert "data.crop_size" in _one_line_error(capsys)


def test_models_lists_the_registry_without_importing_torch():
    # The static index (ast over seglab/models/*.py) must equal the real registry, and the
    # command that prints it must not load torch (issue 18: `seglab models` under a second).
    import subprocess
    import sys

    from seglab.cli.model_index import model_summaries
    from seglab.models import MODELS

    assert model_summaries() == {name: MODELS[name].summary for name in sorted(MODELS)}
    code = (
        "import sys; from seglab.cli import main; main(['models']); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == sorted(MODELS)[0] and len(out.stdout.splitlines()) == len(
        MODELS
    )
