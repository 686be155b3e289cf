"""Data order as a pure function of (seed, epoch), sliced per rank, resumable at any batch.

Why not ``DistributedSampler``: it deals indices to ranks round-robin, so a 2-process run trains
on different batches than a 1-process run with the same global batch, and its position inside an
epoch is not part of its state. Here every epoch has one global permutation drawn from a
generator seeded with ``hash(seed, epoch)``; global batch ``b`` is the slice
``perm[b*B:(b+1)*B]`` and rank ``r`` of ``W`` takes the ``r``-th contiguous ``B/W`` chunk of it.
Resuming at (epoch, batch) is recomputing the permutation and skipping, with no state to save
beyond the two integers. The trailing partial batch is dropped (contrastive losses want full,
equally sized batches on every rank).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from medvl.errors import ConfigError
from medvl.train.rng import isolated_rng, sample_seed


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """The order of positions ``0..n-1`` in ``epoch``: a function of (seed, epoch) only."""
    g = torch.Generator().manual_seed(sample_seed(seed, epoch, -1))
    return torch.randperm(n, generator=g).tolist()


class EpochBatchSampler:
    """Infinite stream of this rank's micro-batches from position (epoch, batch) onwards.

    Items are ``(epoch, dataset_index)`` tuples so that :class:`SeededDataset` can derive the
    augmentation seed of each sample from (seed, epoch, index).
    """

    def __init__(self, indices: Sequence[int], batch_size: int, seed: int, world_size: int = 1,
                 rank: int = 0, start_epoch: int = 0, start_batch: int = 0):
        if batch_size % world_size:
            raise ConfigError(f"train.batch_size={batch_size} must be divisible by the number of "
                              f"processes ({world_size})")
        if len(indices) < batch_size:
            raise ConfigError(f"train.batch_size={batch_size} is larger than the training set "
                              f"({len(indices)} usable samples)")
        self.indices = list(indices)
        self.batch_size = batch_size
        self.local_batch = batch_size // world_size
        self.seed = seed
        self.rank = rank
        self.start_epoch = start_epoch
        self.start_batch = start_batch

    @property
    def batches_per_epoch(self) -> int:
        return len(self.indices) // self.batch_size

    def global_batch(self, epoch: int, batch: int) -> list[int]:
        """Dataset indices of global batch ``batch`` of ``epoch`` (all ranks)."""
        perm = epoch_permutation(len(self.indices), self.seed, epoch)
        return [self.indices[p] for p in perm[batch * self.batch_size:(batch + 1) * self.batch_size]]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, batch = self.start_epoch, self.start_batch
        lo, hi = self.rank * self.local_batch, (self.rank + 1) * self.local_batch
        while True:
            perm = epoch_permutation(len(self.indices), self.seed, epoch)
            for b in range(batch, self.batches_per_epoch):
                chunk = perm[b * self.batch_size:(b + 1) * self.batch_size][lo:hi]
                yield [(epoch, self.indices[p]) for p in chunk]
            epoch, batch = epoch + 1, 0

    def advance(self, epoch: int, batch: int) -> tuple[int, int]:
        """The position after (epoch, batch)."""
        batch += 1
        return (epoch + 1, 0) if batch >= self.batches_per_epoch else (epoch, batch)


class SeededDataset(Dataset):
    """Wraps a map-style dataset so ``ds[(epoch, i)]`` runs with RNGs seeded by (seed, epoch, i).

    Random augmentations then depend on nothing but (seed, epoch, index): the same in a resumed
    run, with any number of DataLoader workers, on any rank.
    """

    def __init__(self, dataset: Any, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        # Datasets that seed their own augmentation from (seed, epoch, index) learn the epoch
        # here, in whichever process (main or worker) serves the item.
        set_epoch = getattr(self.dataset, "set_epoch", None)
        if set_epoch is not None and getattr(self.dataset, "epoch", None) != epoch:
            set_epoch(epoch)
        with isolated_rng(sample_seed(self.seed, epoch, index)):
            return self.dataset[index]
