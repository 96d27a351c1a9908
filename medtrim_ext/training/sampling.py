"""Which samples each training step sees: a pure function of (seed, step), so resuming is exact.

Step ``s`` of a run takes the ``s``-th block of ``global_batch`` indices from a seeded permutation
of the dataset (a new permutation every epoch, the last partial block dropped). Process ``r`` of
``W`` takes the ``r``-th contiguous slice of that block, so a run on W processes sees, step by
step, exactly the global batches of a single-process run with ``W`` times its batch size.
Triplets mined once (:class:`MinedTripletBatchSampler`) are iterated the same way, a triplet in
place of a sample.
"""

from __future__ import annotations

import torch


class StepBatchSampler:
    """A ``batch_sampler`` for ``DataLoader`` yielding this process's indices for steps
    ``start_step .. steps-1``."""

    def __init__(self, n: int, batch_size: int, *, steps: int, start_step: int = 0, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.global_batch = batch_size * world_size
        if n < self.global_batch:
            raise ValueError(f"the training set has {n} samples, fewer than one global batch "
                             f"({batch_size} per process x {world_size} processes)")
        self.n, self.batch_size, self.steps, self.start_step = n, batch_size, steps, start_step
        self.seed, self.rank = seed, rank
        self.steps_per_epoch = n // self.global_batch
        self._epoch, self._perm = -1, None

    def indices_for(self, step: int) -> list[int]:
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=gen)
        start = pos * self.global_batch + self.rank * self.batch_size
        return self._perm[start:start + self.batch_size].tolist()

    def __iter__(self):
        for step in range(self.start_step, self.steps):
            epoch = step // self.steps_per_epoch
            yield [(i, epoch) for i in self.indices_for(step)]

    def __len__(self) -> int:
        return max(self.steps - self.start_step, 0)


class EpochKeyed(torch.utils.data.Dataset):
    """Wraps a dataset so ``ds[(i, epoch)]`` draws item ``i``'s augmentation for that epoch.

    The datasets seed each item's augmentation from (seed, epoch, i); passing the epoch with the
    index keeps that true inside DataLoader workers (which hold their own copy of the dataset),
    so a resumed run, with or without workers, sees the same augmented images.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        i, epoch = key if isinstance(key, tuple) else (key, 0)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        return self.dataset[i]


class MinedTripletBatchSampler:
    """Triplets mined once (``(N, 3)`` dataset indices) as a ``batch_sampler``: every epoch
    iterates all ``N`` triplets in a new seeded order (a function of ``(seed, epoch)``, as
    :class:`StepBatchSampler` orders samples), ``triplets_per_batch`` per process and step, the
    last partial global batch dropped. Step ``s`` yields the ``3T`` indices (anchors, positives,
    negatives) keyed by the epoch (:class:`EpochKeyed`)."""

    def __init__(self, triplets: torch.Tensor, triplets_per_batch: int, *, steps: int,
                 start_step: int = 0, seed: int = 0, rank: int = 0, world_size: int = 1):
        t = torch.as_tensor(triplets)
        if t.dim() != 2 or t.shape[1] != 3:
            raise ValueError(f"triplets must be (N, 3) dataset indices, got shape {tuple(t.shape)}")
        if t.shape[0] < triplets_per_batch * world_size:
            raise ValueError(f"{t.shape[0]} offline triplets are fewer than one global batch "
                             f"({triplets_per_batch} per process x {world_size} processes)")
        self.triplets = t.to(torch.int64).cpu()
        self.rows = StepBatchSampler(t.shape[0], triplets_per_batch, steps=steps, start_step=start_step,
                                     seed=seed, rank=rank, world_size=world_size)
        self.steps, self.start_step = steps, start_step

    @property
    def steps_per_epoch(self) -> int:
        return self.rows.steps_per_epoch

    def triplets_for(self, step: int) -> torch.Tensor:
        """``(T, 3)`` triplets of this process at ``step``."""
        return self.triplets[self.rows.indices_for(step)]

    def __iter__(self):
        for step in range(self.start_step, self.steps):
            epoch = step // self.steps_per_epoch
            t = self.triplets_for(step)
            yield [(i, epoch) for i in t.T.reshape(-1).tolist()]

    def __len__(self) -> int:
        return max(self.steps - self.start_step, 0)


class OfflineStepBatchSampler:
    """The published offline mode as a ``batch_sampler``: step ``s`` yields the 3T indices
    (anchors, positives, negatives) of the offline sampler's batch ``s``."""

    def __init__(self, offline_sampler, *, steps: int, start_step: int = 0):
        self.sampler, self.steps, self.start_step = offline_sampler, steps, start_step

    def __iter__(self):
        for step in range(self.start_step, self.steps):  # batch b is a function of (seed, b)
            yield [(i, step) for i in self.sampler.batch(step).indices]

    def __len__(self) -> int:
        return max(self.steps - self.start_step, 0)
