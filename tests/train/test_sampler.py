"""Data order: a pure function of (seed, epoch), resumable, sliced per rank like one big batch."""

from __future__ import annotations

import itertools

import torch

from medvl.train.sampler import EpochBatchSampler, SeededDataset, epoch_permutation


def _take(sampler: EpochBatchSampler, n: int) -> list[list[tuple[int, int]]]:
    return list(itertools.islice(iter(sampler), n))


def test_order_is_function_of_seed_and_epoch() -> None:
    assert epoch_permutation(50, 1, 0) == epoch_permutation(50, 1, 0)
    assert epoch_permutation(50, 1, 0) != epoch_permutation(50, 1, 1)
    assert epoch_permutation(50, 1, 0) != epoch_permutation(50, 2, 0)
    assert sorted(epoch_permutation(50, 1, 3)) == list(range(50))


def test_resume_skips_to_the_exact_batch() -> None:
    indices = list(range(10, 33))  # 23 usable samples, batch 4 -> 5 batches/epoch, 3 dropped
    full = _take(EpochBatchSampler(indices, 4, seed=7), 12)
    assert all(len(b) == 4 for b in full)
    assert [b[0][0] for b in full] == [0] * 5 + [1] * 5 + [2] * 2
    resumed = _take(EpochBatchSampler(indices, 4, seed=7, start_epoch=1, start_batch=2), 5)
    assert resumed == full[7:12]
    s = EpochBatchSampler(indices, 4, seed=7)
    assert s.advance(0, 3) == (0, 4) and s.advance(0, 4) == (1, 0)
    assert all(i in indices for b in full for _, i in b)


def test_ranks_split_each_global_batch_contiguously() -> None:
    indices = list(range(40))
    one = _take(EpochBatchSampler(indices, 8, seed=3), 6)
    r0 = _take(EpochBatchSampler(indices, 8, seed=3, world_size=2, rank=0), 6)
    r1 = _take(EpochBatchSampler(indices, 8, seed=3, world_size=2, rank=1), 6)
    assert [a + b for a, b in zip(r0, r1, strict=True)] == one


class _Noisy(torch.utils.data.Dataset):
    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, e: int) -> None:
        self.epoch = e

    def __len__(self) -> int:
        return 10

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.rand(2) + self.epoch * 0


def test_seeded_dataset_isolates_and_reproduces_augmentation() -> None:
    ds = SeededDataset(_Noisy(), seed=5)
    torch.manual_seed(0)
    a = ds[(0, 3)]
    after = torch.rand(1)
    torch.manual_seed(0)
    b = ds[(0, 3)]
    assert torch.equal(a, b)
    assert torch.equal(after, torch.rand(1))  # the global stream did not move
    assert not torch.equal(ds[(0, 3)], ds[(1, 3)])
    assert not torch.equal(ds[(0, 3)], ds[(0, 4)])
    assert ds.dataset.epoch == 0  # told the epoch of the last item it served
