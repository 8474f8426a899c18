"""Starting a model from other weights: every tensor whose name and shape match is loaded, the
rest keep the fresh initialisation the model was built with.

    model = create_model("unet", 3, 3, width=16)         # 3 classes: a new classifier
    report = load_matching_weights(model, "runs/shapes/best.safetensors")
    print(report.message)   # kept 30 of 32 tensors; re-initialised 2 (classifier.weight, ...)

This is what `model.init_weights` (and `seglab train --from WEIGHTS`) does: fine-tuning a
trained seglab model on another number of classes re-initialises only the classifier. Weights
matching fewer than half of the model's weight tensors are refused (another model or options).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from seglab.errors import SeglabError

SHOWN_NAMES = 3  # names quoted per list in the message


@dataclass(frozen=True)
class HeadStart:
    """What load_matching_weights did: the model's tensor names it loaded, the model's tensors
    it left initialised (absent from the file or of another shape), and the file's tensors the
    model has no name for."""

    path: Path
    kept: list[str]
    reinitialised: list[str]
    unused: list[str]
    total: int

    @property
    def message(self) -> str:
        def names(items: list[str]) -> str:
            more = f", ... {len(items) - SHOWN_NAMES} more" if len(items) > SHOWN_NAMES else ""
            return f" ({', '.join(items[:SHOWN_NAMES])}{more})" if items else ""

        text = f"{self.path}: kept {len(self.kept)} of {self.total} tensors"
        if self.reinitialised:
            text += f"; re-initialised {len(self.reinitialised)}{names(self.reinitialised)}"
        if self.unused:
            text += f"; {len(self.unused)} in the file not in the model{names(self.unused)}"
        return text


def load_matching_weights(model: torch.nn.Module, path: str | Path) -> HeadStart:
    """Load every tensor of the file at `path` (or run directory) whose name and shape match
    one of `model`'s; keep the others as initialised. Returns what was kept."""
    from seglab.runs import resolve_weights

    path = resolve_weights(path, "model.init_weights: ")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise SeglabError(f"{path}: cannot read weights ({error}); the file is damaged") from None
    own = model.state_dict()
    kept = [k for k, v in own.items() if k in state and state[k].shape == v.shape]
    # Fewer than half of the weight arrays (BatchNorm's scalar step counters match anywhere)
    # means another model or other options: refuse rather than train a mostly fresh model.
    arrays = [k for k, v in own.items() if v.is_floating_point() and v.ndim > 0]
    matched = [k for k in arrays if k in kept]
    if 2 * len(matched) < len(arrays):
        first = next((k for k in arrays if k not in matched), None)
        detail = (
            f"{first} is not in the file"
            if first not in state
            else f"{first} is {tuple(state[first].shape)} in the file, "
            f"{tuple(own[first].shape)} in the model"
        )
        raise SeglabError(
            f"{path}: checkpoint does not fit the model: {len(matched)} of {len(arrays)} weight "
            f"tensors match by name and shape ({detail}); use the model name and options the "
            "weights were trained with"
        )
    model.load_state_dict({k: state[k] for k in kept}, strict=False)
    reinitialised = [k for k in own if k not in set(kept)]
    unused = [k for k in state if k not in own]
    return HeadStart(path, kept, reinitialised, unused, len(own))
