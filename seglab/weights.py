"""Model weights: `NAME.safetensors` plus `NAME.yaml` beside it.

The YAML names the model, its options, its task and its classes (the model's `seglab_spec`),
so `load_weights` rebuilds the model without the training config and without unpickling
anything. Both files are written atomically (seglab.atomic). Every error about either file is
one line naming it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from seglab.atomic import write_bytes_atomically, write_text_atomically
from seglab.errors import SeglabError, first_line
from seglab.models import create_model, unwrap


def weights_meta_path(weights: str | Path) -> Path:
    return Path(weights).with_suffix(".yaml")


def save_weights(
    model: torch.nn.Module, path: str | Path, classes=None, extra: dict | None = None
) -> Path:
    """Write model weights (safetensors) and the YAML that names the model and its classes.

    extra: more YAML keys (the trainer's best.yaml records `best: {step, mean_iou}`)."""
    model = unwrap(model)  # DDP, torch.compile
    spec = getattr(model, "seglab_spec", None)  # the one attribute create_model adds
    if spec is None:
        raise ValueError("save_weights needs a model made by seglab.create_model")
    meta = {"format": "seglab-weights-1", **spec}
    if classes is not None:
        meta["classes"] = [
            {"name": name, "color": list(color)}
            for name, color in zip(classes.names, classes.colors, strict=True)
        ]
    meta.update(extra or {})
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    path = Path(path)
    # Serialised in memory and written under our own temporary name: safetensors' save_file
    # would leave a temporary file of its own behind when killed.
    write_bytes_atomically(path, safetensors_bytes(tensors))
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
        first = first_line(error)
        raise SeglabError(f"{meta_path}: not valid YAML ({first}); restore the file") from None
    if not isinstance(meta, dict) or "name" not in meta or "num_classes" not in meta:
        raise SeglabError(f"{meta_path}: not a seglab weights description (no model name)")
    if not isinstance(meta.get("options", {}), dict):
        raise SeglabError(f"{meta_path}: options must be a mapping of option names to values")
    return meta


def load_weights(
    path: str | Path, map_location: str | torch.device = "cpu", task: str = "semantic"
):
    """Rebuild the model named beside `path` and load its weights. Returns (model, meta).

    task: what the caller can use; weights of another task (an instance model's for a semantic
    caller) are refused. Files written before the task was recorded are semantic.
    """
    meta = read_weights_meta(path)
    meta_path = weights_meta_path(path)
    recorded = meta.get("task", "semantic")
    if recorded != task:
        raise SeglabError(
            f"{path}: {meta_path.name} says these are weights of a model for task "
            f"{recorded!r} ({meta['name']}); this needs task {task!r}"
        )
    try:
        model = create_model(
            meta["name"],
            meta["num_classes"],
            meta.get("in_channels", 3),
            **meta.get("options", {}),
        )
    except SeglabError as error:  # e.g. an option the named model does not take
        raise SeglabError(f"{meta_path}: {error}") from None
    except (TypeError, ValueError) as error:  # an option of the wrong type or value
        raise SeglabError(f"{meta_path}: cannot build {meta['name']!r} ({error})") from None
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
