"""Offline triplet mining as in the published MedTrim code: triplets mined in small random pools.

The published training loop mines before encoding: it draws random samples, splits them into small
mini-batches, and in each mini-batch mines one anchor's positive and semi-hard negative among the
others by their meta-entities alone. :class:`OfflineTripletSampler` yields batches of such
triplets as dataset indices; the training loop loads and encodes the ``3T`` samples and applies
the triplet loss to the rows its :class:`~medtrim_ext.Triplets` name.
"""

from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np
import torch

from .entities import MetaEntities
from .mining import TripletMiner, Triplets

_STATE_KEYS = ("seed", "step", "num_samples", "triplets_per_batch", "pool_size")


class OfflineBatch(NamedTuple):
    """One batch of ``T`` offline triplets.

    ``indices``: ``3T`` dataset indices -- the anchors, then the positives, then the negatives.
    ``triplets``: rows into those ``3T`` samples (anchor ``k``, positive ``T + k``, negative
    ``2T + k``), ready for ``MultimodalTripletLoss(img_emb, txt_emb, triplets)``.
    """

    indices: list[int]
    triplets: Triplets


class OfflineTripletSampler:
    """Infinite, seeded, resumable iterator of :class:`OfflineBatch` es.

    For every triplet: a random pool of ``pool_size`` distinct samples (all samples when there are
    fewer), its first sample the anchor; the ``miner`` (its fused kernel) picks the anchor's
    positive and semi-hard negative among the rest of the pool (``anchor_ids``/``candidate_ids``
    are dataset indices, so the anchor never pairs with itself). A pool without a triplet (e.g.
    nothing scores below the miner's ``upper``) is redrawn, at most ``max_redraws`` times per
    triplet; then a ValueError says the data seems to have no triplets (e.g. all samples alike).

    >>> sampler = OfflineTripletSampler(entities, TripletMiner(), triplets_per_batch=32, seed=0)
    >>> batch = next(sampler)               # batch.indices: 96 dataset indices
    >>> state = sampler.state_dict()        # ... later: sampler.load_state_dict(state)

    Batch ``b`` depends only on ``(seed, b)`` (:meth:`batch`), so resuming at a step gives the same
    batches as an uninterrupted run. The entities are best kept on the CPU: each pool is one small
    kernel call.
    """

    def __init__(self, entities: MetaEntities, miner: TripletMiner, *, triplets_per_batch: int,
                 pool_size: int = 32, seed: int = 0, max_redraws: int = 100):
        if not isinstance(entities, MetaEntities):
            raise TypeError(f"entities must be MetaEntities, got {type(entities).__name__}")
        if not isinstance(miner, TripletMiner):
            raise TypeError(f"miner must be a TripletMiner, got {type(miner).__name__}")
        for name, value, low in (("triplets_per_batch", triplets_per_batch, 1), ("pool_size", pool_size, 3),
                                 ("seed", seed, 0), ("max_redraws", max_redraws, 1)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an int, got {value!r}")
            if value < low:
                raise ValueError(f"{name} must be >= {low}, got {value}")
        if len(entities) < 3:
            raise ValueError(f"offline mining needs at least 3 samples (anchor, positive, negative), "
                             f"got {len(entities)}")
        self.entities, self.miner = entities, miner
        self.triplets_per_batch, self.pool_size = triplets_per_batch, pool_size
        self.seed, self.max_redraws = seed, max_redraws
        self.step = 0  # the next batch __next__ yields

    def __repr__(self) -> str:
        return (f"OfflineTripletSampler(n={len(self.entities)}, triplets_per_batch={self.triplets_per_batch}, "
                f"pool_size={self.pool_size}, seed={self.seed}, step={self.step})")

    def __iter__(self) -> Iterator[OfflineBatch]:
        return self

    def __next__(self) -> OfflineBatch:
        out = self.batch(self.step)
        self.step += 1
        return out

    def batch(self, b: int) -> OfflineBatch:
        """Batch number ``b`` (a pure function of ``seed`` and ``b``; does not move the position)."""
        if isinstance(b, bool) or not isinstance(b, int) or b < 0:
            raise ValueError(f"the batch number must be an int >= 0, got {b!r}")
        t_count = self.triplets_per_batch
        n = len(self.entities)
        pool = min(self.pool_size, n)
        rng = np.random.default_rng([self.seed, b])
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        device = self.entities.device
        anchors = [-1] * t_count
        positives = [-1] * t_count
        negatives = [-1] * t_count
        pending = list(range(t_count))
        for _ in range(self.max_redraws):
            pools = np.stack([rng.choice(n, size=pool, replace=False) for _ in pending])
            # one gather for all pools; each pool is then a slice of it
            flat = torch.from_numpy(pools.reshape(-1)).to(device)
            members = self.entities[flat]
            found = []
            for j in range(len(pending)):
                lo = j * pool
                cands, ids = members[slice(lo, lo + pool)], flat[lo:lo + pool]
                mined = self.miner(cands[slice(0, 1)], cands, anchor_ids=ids[:1], candidate_ids=ids,
                                   generator=generator)
                found.append(torch.stack([mined.positive[0], mined.negative[0]]))
            pos_neg = torch.stack(found).cpu().tolist()  # one synchronisation per round
            still = []
            for j, (k, (p, q)) in enumerate(zip(pending, pos_neg)):
                if p >= 0 and q >= 0:
                    anchors[k], positives[k], negatives[k] = (int(pools[j, 0]), int(pools[j, p]),
                                                              int(pools[j, q]))
                else:
                    still.append(k)
            pending = still
            if not pending:
                break
        else:
            raise ValueError(f"no triplet in {self.max_redraws} random pools of {pool} samples: the data "
                             "seem to have no (anchor, positive, negative) triplets for this miner (e.g. "
                             "all samples have the same meta-entities, or none scores below upper="
                             f"{self.miner.upper})")
        rows = torch.arange(t_count)
        return OfflineBatch(anchors + positives + negatives,
                            Triplets(rows, rows + t_count, rows + 2 * t_count))

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The position (and what it is only valid for)."""
        return {"seed": self.seed, "step": self.step, "num_samples": len(self.entities),
                "triplets_per_batch": self.triplets_per_batch, "pool_size": self.pool_size}

    def load_state_dict(self, state: dict) -> None:
        """Resume at the saved position; the seed, data size and batch shape must be the same."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state).__name__}")
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"offline sampler state misses keys {missing}")
        mine = self.state_dict()
        for key in ("seed", "num_samples", "triplets_per_batch", "pool_size"):
            if state[key] != mine[key]:
                raise ValueError(f"offline sampler state has {key}={state[key]!r} but this sampler "
                                 f"{key}={mine[key]!r}")
        step = state["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"offline sampler state has an invalid step {step!r}")
        self.step = step
