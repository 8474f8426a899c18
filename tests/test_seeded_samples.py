"""A seeded sample key (index, seed) draws its augmentation from the CPU generator seeded with
`seed` alone (seglab/data/folder.py): the same draws as torch.manual_seed(seed) gave, and the
caller's random state is untouched."""

from __future__ import annotations

import torch

from seglab.data.folder import FolderDataset
from seglab.data.transforms import train_transform


def test_seeded_key_is_the_transform_after_seeding_the_cpu_generator(shapes_root):
    transform = train_transform([20, 20], [0.5, 1.5], True)
    dataset = FolderDataset(shapes_root, "train", transform)
    plain = FolderDataset(shapes_root, "train")  # (3, H, W) uint8, (H, W) int64, unaugmented
    image, mask = plain[5]
    torch.manual_seed(7)
    expected = transform(image, mask)  # the reference: the full torch.manual_seed

    torch.manual_seed(123)
    state = torch.get_rng_state()
    got = dataset[(5, 7)]
    assert torch.equal(torch.get_rng_state(), state)  # fork_rng: the caller's stream goes on
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
