"""Checkpoints that never exist half-written.

- Weights: `NAME.safetensors` plus `NAME.yaml` beside it naming the model, its options and the
  classes, so `load_weights` rebuilds the model without the training config or unpickling.
- Resume state: `last.pt` with model, optimizer, schedule, scaler, step and every RNG state.
Every file is written to a temporary name in the same folder, flushed to disk, then renamed
over the target: a kill at any moment leaves the old file or the new one, never a mix.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from seglab.errors import SeglabError
from seglab.models import create_model


def write_atomically(path: str | Path, write: Callable[[str], None]) -> None:
    """Call write(temporary_path), fsync it, then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomically(path: str | Path, text: str) -> None:
    write_atomically(path, lambda tmp: Path(tmp).write_text(text))


def write_png_atomically(image, path: str | Path) -> None:
    """Save a PIL image as PNG under `path` atomically."""
    write_atomically(path, lambda tmp: image.save(tmp, format="PNG"))


def weights_meta_path(weights: str | Path) -> Path:
    return Path(weights).with_suffix(".yaml")


def save_weights(model: torch.nn.Module, path: str | Path, classes=None) -> Path:
    """Write model weights (safetensors) and the YAML that names the model and its classes."""
    spec = getattr(model, "seglab_spec", None)
    if spec is None:
        raise ValueError("save_weights needs a model made by seglab.create_model")
    meta = {"format": "seglab-weights-1", **spec}
    if classes is not None:
        meta["classes"] = [
            {"name": name, "color": list(color)}
            for name, color in zip(classes.names, classes.colors, strict=True)
        ]
    module = getattr(model, "module", model)  # DDP
    tensors = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    path = Path(path)
    write_atomically(path, lambda tmp: save_file(tensors, tmp))
    write_text_atomically(weights_meta_path(path), yaml.safe_dump(meta, sort_keys=False))
    return path


def read_weights_meta(path: str | Path) -> dict[str, Any]:
    meta_path = weights_meta_path(path)
    if not Path(path).is_file():
        raise SeglabError(f"{path}: weights file not found")
    if not meta_path.is_file():
        raise SeglabError(
            f"{meta_path} is missing: seglab weights come as NAME.safetensors + NAME.yaml; "
            "copy the YAML that was written beside the weights"
        )
    try:
        meta = yaml.safe_load(meta_path.read_text()) or {}
    except yaml.YAMLError as error:
        first = str(error).splitlines()[0]
        raise SeglabError(f"{meta_path}: not valid YAML ({first}); restore the file") from None
    if not isinstance(meta, dict) or "name" not in meta or "num_classes" not in meta:
        raise SeglabError(f"{meta_path}: not a seglab weights description (no model name)")
    return meta


def load_weights(path: str | Path, map_location: str | torch.device = "cpu"):
    """Rebuild the model named beside `path` and load its weights. Returns (model, meta)."""
    meta = read_weights_meta(path)
    model = create_model(
        meta["name"], meta["num_classes"], meta.get("in_channels", 3), **meta.get("options", {})
    )
    try:
        state = load_file(str(path), device=str(map_location))
    except (SafetensorError, OSError) as error:
        raise SeglabError(f"{path}: cannot read weights ({error}); the file is damaged") from None
    load_state_checked(model, state, path, f"{meta['name']} with {meta['num_classes']} classes")
    return model, meta


def load_state_checked(
    model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path, what: str
) -> None:
    """load_state_dict(strict) whose failure is one line naming the file and the first mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        if wrong:
            k = wrong[0]
            detail = f"{k} is {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in {what}"
        else:
            detail = f"missing {missing[:1]}, unexpected {unexpected[:1]}"
        raise SeglabError(
            f"{path}: checkpoint does not fit {what} ({detail}); "
            "use the model name, options and number of classes it was trained with"
        )
    model.load_state_dict(state)


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_resume(path: str | Path, state: dict[str, Any]) -> None:
    """Write the training state (see trainer) atomically, with the RNG states added."""
    state = {**state, "rng": rng_state()}
    write_atomically(path, lambda tmp: torch.save(state, tmp))


def load_resume(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SeglabError(f"{path}: no resume checkpoint; start the run without --resume")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a damaged file: say so instead of a pickle traceback
        raise SeglabError(f"{path}: cannot read resume checkpoint ({error})") from None
