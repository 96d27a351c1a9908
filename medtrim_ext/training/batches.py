"""Which batches a run's objective needs: random samples (online mining, InfoNCE), fresh offline
pools for every step, or offline triplets mined once before the first step.

The objective decides (:attr:`ObjectiveStep.offline`, ``objective.offline_triplets``); the
training loop only asks :func:`build_batch_sampler` for the ``batch_sampler`` of its DataLoader.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .config import Config
from .distributed import DistContext, barrier
from .objective_step import ObjectiveStep
from .sampling import MinedTripletBatchSampler, OfflineStepBatchSampler, StepBatchSampler

OFFLINE_TRIPLETS_FILE = "offline_triplets.csv"


def build_batch_sampler(cfg: Config, dataset, objective: ObjectiveStep, ctx: DistContext, *,
                        start_step: int, out_dir: Path, progress: bool):
    """This process's ``batch_sampler`` for steps ``start_step .. train.steps - 1``."""
    common = dict(steps=cfg.train.steps, start_step=start_step)
    if not objective.offline:
        return StepBatchSampler(len(dataset), cfg.train.batch_size, seed=cfg.train.seed,
                                rank=ctx.rank, world_size=ctx.world_size, **common)
    per_batch = cfg.train.batch_size // 3
    if cfg.objective.offline_triplets:
        triplets = mined_triplets(cfg, dataset, objective, ctx, out_dir=out_dir, progress=progress)
        return MinedTripletBatchSampler(triplets, per_batch, seed=cfg.train.seed, rank=ctx.rank,
                                        world_size=ctx.world_size, **common)
    from ..entities import MetaEntities
    from ..mining.offline import OfflineTripletSampler

    sampler = OfflineTripletSampler(MetaEntities.from_records(dataset.records), objective.miner,
                                    triplets_per_batch=per_batch, pool_size=cfg.objective.pool_size,
                                    seed=cfg.train.seed + 7919 * ctx.rank)
    return OfflineStepBatchSampler(sampler, **common)


def mined_triplets(cfg: Config, dataset, objective: ObjectiveStep, ctx: DistContext, *,
                   out_dir: Path, progress: bool) -> torch.Tensor:
    """The run's offline triplets, mined once: read from ``<out_dir>/offline_triplets.csv`` when
    it exists (checked against this data and the miner's settings), else mined by the main
    process (seeded by ``train.seed``) and written there atomically."""
    from ..entities import MetaEntities
    from ..mining.offline import (load_offline_triplets, mine_offline_triplets, offline_triplets_meta,
                                  save_offline_triplets)

    obj = cfg.objective
    n = len(dataset)
    if obj.offline_set_size > n:
        raise ValueError(f"objective.offline_set_size={obj.offline_set_size} is larger than the "
                         f"training set ({n} samples)")
    per_step = cfg.train.batch_size // 3 * ctx.world_size
    if obj.offline_triplets < per_step:
        raise ValueError(f"objective.offline_triplets={obj.offline_triplets} is less than one global "
                         f"batch ({per_step} triplets)")
    settings = dict(num_triplets=obj.offline_triplets, pool_size=obj.pool_size,
                    set_size=obj.offline_set_size, seed=cfg.train.seed)
    meta = offline_triplets_meta(dataset.study_ids, objective.miner, **settings)
    path = Path(out_dir) / OFFLINE_TRIPLETS_FILE
    triplets = None
    if ctx.is_main and not path.exists():
        triplets = mine_offline_triplets(MetaEntities.from_records(dataset.records), objective.miner,
                                         progress=progress, **settings)
        save_offline_triplets(path, triplets, dataset.study_ids, meta)
    barrier(ctx)
    return triplets if triplets is not None else load_offline_triplets(path, dataset.study_ids, meta)
