"""torch.distributed set-up for runs started by torchrun (one process per GPU or CPU slot).

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE (and the rendezvous for several machines); a
plain `seglab train` has none of them and runs as a world of one, with no process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from seglab.device import resolve_device


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        """Only the main process writes checkpoints, logs and reports."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init_world(device_name: str) -> tuple[World, torch.device]:
    """Join torchrun's process group (NCCL on CUDA, gloo on the CPU); pick this rank's device."""
    if "WORLD_SIZE" not in os.environ or int(os.environ["WORLD_SIZE"]) == 1:
        return World(), resolve_device(device_name, 0, "train.device")
    world = World(
        int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    )
    device = resolve_device(device_name, world.local_rank, "train.device")
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend)
    return world, device


def mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The average of a scalar over all ranks (identity outside torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        value = value.detach().clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def any_rank(flag: bool, device: torch.device) -> bool:
    """True if `flag` is true on any rank, so that every rank takes the same branch."""
    if dist.is_available() and dist.is_initialized():
        tensor = torch.tensor(float(flag), device=device)
        dist.all_reduce(tensor)
        return bool(tensor.item())
    return flag


def close_world() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
