"""The training data order: an endless, resumable stream of (index, augmentation seed).

Sample g of the run (counting across ranks) is item g mod N of epoch g // N's permutation,
drawn from (seed, epoch) alone, and carries its own augmentation seed. Consequences:
- a run resumed at step s continues with exactly the samples and crops it would have seen;
- under torchrun the global batch is the same set of samples whatever the number of ranks
  (rank r of W takes its slice of each global batch), so curves are comparable across set-ups;
- every epoch is reshuffled, as DistributedSampler.set_epoch does.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class TrainSampler(Sampler):
    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        seed: int,
        start_step: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size % world_size:
            raise ValueError(f"batch size {batch_size} does not split over {world_size} ranks")
        self.size, self.batch_size, self.seed = dataset_size, batch_size, seed
        self.start_step, self.rank = start_step, rank
        self.local_batch = batch_size // world_size

    def _permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.size, generator=generator)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        step, epoch, permutation = self.start_step, -1, None
        while True:
            first = step * self.batch_size + self.rank * self.local_batch
            for g in range(first, first + self.local_batch):
                sample_epoch, position = divmod(g, self.size)
                if sample_epoch != epoch:
                    epoch, permutation = sample_epoch, self._permutation(sample_epoch)
                yield int(permutation[position]), (self.seed * 1_000_000_007 + g) % 2**63
            step += 1
