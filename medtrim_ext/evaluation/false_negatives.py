"""In-batch false negatives: pairs of a training batch whose reports have identical meta-entity
records. InfoNCE treats every other item of the batch as a negative, so such a pair is pushed
apart although nothing in the reports tells the two studies apart (open_clip issue #1027 reports
the same for medical CLIP). The meta-entity objectives score these pairs as positives.
"""

from __future__ import annotations

from typing import Sequence

import torch


def in_batch_false_negatives(records: Sequence[dict], batch_size: int, steps: int, seed: int = 0) -> dict:
    """What a training run's batches hold, averaged over its ``steps`` batches (the same batches a
    run of ``train.seed = seed`` draws: :class:`~medtrim_ext.training.sampling.StepBatchSampler`):

    - ``identical_pairs``: pairs of items with identical records (of ``pairs`` in a batch);
    - ``identical_normal_pairs``: of those, pairs of two reports with no finding;
    - ``items_with_a_twin``: share of the items that have at least one identical record in the batch;
    - ``distinct_records``: distinct records per batch.
    """
    from ..entities.meta_entities import MetaEntities
    from ..training.sampling import StepBatchSampler
    from .keys import entity_keys

    # equal key = the same diseases, each with the same adjective and direction sets
    groups = entity_keys(MetaEntities.from_records(list(records)))
    normal = torch.tensor([not r for r in records])
    sampler = StepBatchSampler(len(records), batch_size, steps=steps, seed=seed)
    totals = {"identical_pairs": 0.0, "identical_normal_pairs": 0.0, "items_with_a_twin": 0.0,
              "distinct_records": 0.0}
    for step in range(steps):
        idx = torch.tensor(sampler.indices_for(step))
        _, inverse, counts = torch.unique(groups[idx], return_inverse=True, return_counts=True)
        totals["identical_pairs"] += float((counts * (counts - 1) // 2).sum())
        n_normal = int(normal[idx].sum())
        totals["identical_normal_pairs"] += n_normal * (n_normal - 1) / 2
        totals["items_with_a_twin"] += float((counts[inverse] > 1).float().mean())
        totals["distinct_records"] += float(len(counts))
    out = {k: v / max(steps, 1) for k, v in totals.items()}
    out.update(batch_size=batch_size, steps=steps, seed=seed, pairs=batch_size * (batch_size - 1) // 2,
               normal_share=float(normal.float().mean()) if len(records) else float("nan"),
               distinct_records_in_split=int(groups.max()) + 1 if len(records) else 0)
    return out
