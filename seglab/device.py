"""Choosing the torch device from a user's setting, in one place."""

from __future__ import annotations

import torch

from seglab.errors import SeglabError


def resolve_device(
    name: str | torch.device = "auto", local_rank: int | None = None, option: str = "device"
) -> torch.device:
    """ "auto" is CUDA when torch sees a GPU, else the CPU; a bare "cuda" under torchrun is this
    rank's GPU (`local_rank`). A CUDA device on a machine without one, or a name torch does not
    know, is a one-line SeglabError naming `option` (e.g. train.device, --device)."""
    name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SeglabError(
            f"{option}={name} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SeglabError(f"{option}={name}, but torch sees no CUDA device here; use cpu")
        if device.index is None and local_rank is not None:
            device = torch.device("cuda", local_rank)
    return device
