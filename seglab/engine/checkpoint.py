"""Resume state: `last.pt` with model, optimizer, schedule, scaler, step and every RNG state.

Everything in it is a tensor or a plain value (dict, list, tuple, str, int, float, bool, None),
so it is read with `torch.load(weights_only=True)`: a `last.pt` from someone else cannot run
code, and one that holds anything else is refused with one line naming it. Written atomically
(seglab.atomic). Model weights for inference are seglab.weights.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seglab.atomic import write_atomically
from seglab.errors import SeglabError, first_line

RESUME_KEYS = ("model", "optimizer", "scheduler", "scaler", "step", "best_miou", "rng")


def rng_state() -> dict[str, Any]:
    """Every RNG state as tensors and plain values (what weights_only loading accepts)."""
    version, python_state, gauss = random.getstate()
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(python_state), "gauss": gauss},
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    python, numpy_state = state["python"], state["numpy"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
    np.random.set_state(
        (
            numpy_state["name"],
            numpy_state["keys"].numpy().astype(np.uint32),
            numpy_state["pos"],
            numpy_state["has_gauss"],
            numpy_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_resume(path: str | Path, state: dict[str, Any]) -> None:
    """Write the training state (see trainer) atomically, with the RNG states added."""
    state = {**state, "rng": rng_state()}
    write_atomically(path, lambda tmp: torch.save(state, tmp))


def load_resume(path: str | Path) -> dict[str, Any]:
    """The state save_resume wrote; anything that is not plain data is refused unread."""
    path = Path(path)
    if not path.is_file():
        raise SeglabError(f"{path}: no resume checkpoint; start the run without --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first = first_line(error)
        raise SeglabError(
            f"{path}: refused: it holds pickled objects, not only tensors and plain values "
            f"({first}); seglab does not run code from a checkpoint: delete it or use a "
            "last.pt written by seglab"
        ) from None
    except Exception as error:  # a damaged file: say so instead of a zip/pickle traceback
        first = first_line(error)
        raise SeglabError(f"{path}: cannot read resume checkpoint ({first})") from None
    missing = [key for key in RESUME_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise SeglabError(f"{path}: not a seglab resume checkpoint (no {missing[0]!r})")
    return state
