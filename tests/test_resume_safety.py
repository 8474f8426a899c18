"""Resume state from strangers, kill -9 at chosen moments, and the trainer's one-line errors."""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import random
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from seglab.config import save_config
from seglab.engine.checkpoint import load_resume, rng_state, set_rng_state
from seglab.engine.trainer import train
from seglab.errors import SeglabError
from seglab.weights import load_weights, save_weights, weights_meta_path


class _Payload:
    """Unpickling this writes a marker file: what a malicious last.pt would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def test_crafted_resume_checkpoint_is_refused_and_its_payload_never_runs(tiny_config, tmp_path):
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(_Payload(proof)))  # the payload is real: plain unpickling runs it
    assert proof.read_text() == "ran"

    marker = tmp_path / "marker"
    cfg = tiny_config()
    last = tmp_path / "run" / "last.pt"
    last.parent.mkdir()
    torch.save({"model": _Payload(marker), "step": 2}, last)
    with pytest.raises(SeglabError) as error:
        train(cfg, resume=True, progress=False)
    message = str(error.value)
    assert "\n" not in message and str(last) in message and "refused" in message
    assert not marker.exists()


def test_resume_state_is_plain_data_and_restores_every_rng(tiny_config, tmp_path):
    train(tiny_config(), progress=False, stop_after=2)
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)  # no pickled objects
    assert state["step"] == 2

    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.normal()  # numpy caches the second Gaussian of a pair: that must survive too
    saved = rng_state()
    expected = (random.random(), np.random.normal(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(saved)
    assert (random.random(), np.random.normal(), torch.rand(1).item()) == expected


def test_damaged_or_foreign_resume_files_are_one_line_errors(tmp_path):
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"PK\x03\x04 not really a zip")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    for path, reason in ((damaged, "cannot read"), (foreign, "not a seglab resume")):
        with pytest.raises(SeglabError, match=reason) as error:
            load_resume(path)
        assert "\n" not in str(error.value) and str(path) in str(error.value)


# --- kill -9 -------------------------------------------------------------------------------

KILL_RUN = ["train.threads=1", "train.iters=8", "train.eval_every=3", "train.checkpoint_every=2"]


def _train_until_killed(config: Path, resume: bool, moment: str) -> None:
    """In a fresh process: train, and SIGKILL ourselves at `moment` (no cleanup runs)."""
    from seglab import atomic
    from seglab.config import load_config
    from seglab.engine import run_log

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    real_replace, real_append = os.replace, run_log.RunLog._append

    def replace(source, target):  # the temporary file is complete but not yet renamed
        if Path(target).name == moment:
            die()
        real_replace(source, target)

    def append(self, record):  # half a line reaches the disk, then the process dies
        if moment == "metrics" and record.get("step") == 5 and "loss" in record:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record)[:9])
            die()
        real_append(self, record)

    atomic.os.replace = replace
    run_log.RunLog._append = append
    train(load_config(config), resume=resume, progress=False)


def _run_listing(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.iterdir())


def _tensorboard_steps(run: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    return [e.step for e in events.Scalars(tag)]


def test_kill_9_before_during_and_after_checkpoints_then_resume(tiny_config, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is in the test extra")
    straight = train(tiny_config(*KILL_RUN, f"run_dir={tmp_path / 'straight'}"), progress=False)
    killed = tmp_path / "killed"
    cfg = tiny_config(*KILL_RUN, f"run_dir={killed}")
    config = tmp_path / "killed.yaml"
    save_config(cfg, config)

    context = multiprocessing.get_context("forkserver")  # children fork from a clean process
    context.set_forkserver_preload(["seglab.engine.trainer"])
    # 1: while writing the first last.pt (no checkpoint yet: the restart is from step 0);
    # 2: while writing best.safetensors at step 3; 3: mid-way through a metrics line at step 5.
    for resume, moment in ((False, "last.pt"), (True, "best.safetensors"), (True, "metrics")):
        child = context.Process(target=_train_until_killed, args=(config, resume, moment))
        child.start()
        child.join(timeout=120)
        assert child.exitcode == -signal.SIGKILL, moment
        if moment == "last.pt":
            assert not (killed / "last.pt").exists() and list(killed.glob(".last.pt.*.tmp"))
        if moment == "best.safetensors":
            assert list(killed.glob(".best.safetensors.*.tmp"))
    (killed / ".tmpAb12Cd").write_bytes(b"x")  # what a library's own temporary file looks like
    train(cfg, resume=True, progress=False)

    a, b = (
        load_file(str(straight / "final.safetensors")),
        load_file(str(killed / "final.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    lines = [json.loads(line) for line in (killed / "metrics.jsonl").open()]
    assert [r["step"] for r in lines if "loss" in r] == list(range(1, 9))
    assert [r["step"] for r in lines if "val" in r] == [3, 6, 8]
    assert _run_listing(killed) == _run_listing(straight)
    assert len(list((killed / "tensorboard").iterdir())) == 1  # the sessions' events merged
    assert _tensorboard_steps(killed, "train/loss") == list(range(1, 9))
    assert _tensorboard_steps(killed, "val/mean_iou") == [3, 6, 8]


def test_start_over_a_run_killed_before_its_first_checkpoint(tiny_config, tmp_path, capfd):
    for resume in (False, True):
        run = tmp_path / f"run_{resume}"
        run.mkdir()
        (run / "config.yaml").write_text("{}\n")
        (run / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "lo')
        (run / "tensorboard").mkdir()
        (run / "tensorboard" / "events.out.tfevents.old").write_bytes(b"old")
        train(tiny_config(f"run_dir={run}"), resume=resume, progress=False)
        lines = [json.loads(line) for line in (run / "metrics.jsonl").open()]
        assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3, 4, 5, 6]
        assert 9.0 not in [r.get("loss") for r in lines]
        assert not (run / "tensorboard" / "events.out.tfevents.old").exists()
        assert "starting from step 0" in capfd.readouterr().err
    train(tiny_config(f"run_dir={tmp_path / 'never'}"), resume=True, progress=False)
    assert (tmp_path / "never" / "final.safetensors").is_file()  # --resume of nothing: step 0


# --- weights files --------------------------------------------------------------------------


def _saved_unet(tmp_path: Path) -> Path:
    from seglab.models import create_model

    path = tmp_path / "w.safetensors"
    save_weights(create_model("unet", 3, 3, width=4, depth=2), path)
    return path


def test_weights_record_their_task_and_another_task_is_refused(tmp_path):
    path = _saved_unet(tmp_path)
    meta = yaml.safe_load(weights_meta_path(path).read_text())
    assert meta["task"] == "semantic" and meta["in_channels"] == 3
    meta["task"] = "instance"
    weights_meta_path(path).write_text(yaml.safe_dump(meta))
    with pytest.raises(SeglabError, match="task 'instance'") as error:
        load_weights(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)
    meta["task"] = "semantic"
    weights_meta_path(path).write_text(yaml.safe_dump(meta))
    with pytest.raises(SeglabError, match="task 'semantic'"):
        load_weights(path, task="instance")  # what the caller asks for decides


def test_weights_yaml_with_an_option_its_model_lacks_names_the_yaml(tmp_path):
    path = _saved_unet(tmp_path)
    meta = yaml.safe_load(weights_meta_path(path).read_text())
    meta["options"]["batch_normalization"] = False
    weights_meta_path(path).write_text(yaml.safe_dump(meta))
    with pytest.raises(SeglabError, match="no option 'batch_normalization'") as error:
        load_weights(path)
    assert str(weights_meta_path(path)) in str(error.value)


def test_weights_are_written_without_stray_temporary_files(tmp_path):
    path = _saved_unet(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors", "w.yaml"]
    model, _ = load_weights(path)
    assert model.seglab_spec["in_channels"] == 3
    import seglab

    assert seglab.save_weights is save_weights and seglab.load_weights is load_weights


# --- the trainer's one-line errors ----------------------------------------------------------


def _one_line_error(cfg) -> str:
    with pytest.raises(SeglabError) as error:
        train(cfg, progress=False)
    assert "\n" not in str(error.value)
    return str(error.value)


def test_images_of_different_sizes_without_crop_size_name_data_crop_size(tmp_path, tiny_config):
    from seglab.data.shapes import write_shapes_dataset

    root = write_shapes_dataset(tmp_path / "mixed", train=4, val=2, size=32)
    names = (root / "train.txt").read_text().split()
    image = root / "images" / f"{names[1]}.png"
    Image.open(image).resize((40, 30)).save(image)
    mask = root / "masks" / f"{names[1]}.png"
    Image.open(mask).resize((40, 30), Image.NEAREST).save(mask)
    message = _one_line_error(
        tiny_config(f"data.root={root}", "data.crop_size=null", "data.scale_range=null")
    )
    assert "data.crop_size" in message and "40x30" in message
    workers = tiny_config(
        f"data.root={root}", "data.crop_size=null", "data.scale_range=null", "data.num_workers=1"
    )
    assert "data.crop_size" in _one_line_error(workers)  # raised in a loader worker


def test_config_mistakes_are_one_line_before_training(tiny_config, tmp_path):
    assert "model.options.num_classes" in _one_line_error(
        tiny_config("model.options.num_classes=3")
    )
    message = _one_line_error(tiny_config("loss.aux_weights=[0.4]"))
    assert "loss.aux_weights" in message and "0 auxiliary outputs" in message
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # nothing was trained


def test_trainer_builds_the_model_for_the_datasets_channels(tiny_config, tmp_path):
    from seglab.models import model_info

    assert model_info("unet").in_channels_default() == 1  # the class default is grayscale
    train(tiny_config("train.iters=1", "train.eval_every=1"), progress=False)
    meta = yaml.safe_load((tmp_path / "run" / "final.yaml").read_text())
    assert meta["in_channels"] == 3  # the shapes images are RGB


def test_quiet_training_draws_no_progress_bar(tiny_config, capfd):
    train(tiny_config("train.iters=1", "train.eval_every=1"), progress=False)
    assert capfd.readouterr().err == ""
