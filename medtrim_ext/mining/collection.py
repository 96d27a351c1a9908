"""Whole collections: triplets and top-K neighbours of hundreds of thousands of studies, folded.

Radiology meta-entity records repeat heavily (the 3,955 IU reports hold 883 distinct records), so
scoring every pair of samples repeats the same work over and over. The folded kernel
(``torch.ops.medtrim.mine_folded``) scores each distinct anchor record against each distinct
candidate record once, keeps per distinct record only the few score levels the mining rule can
reach, and then resolves each anchor *sample*'s choice among the samples of those levels by the
miner's own tie rule (the next sample after the anchor on the random circle of the seed, see
``docs/semantics.md``). So the result equals the unfolded miner's exactly, under both tie rules,
while the work is ``U_a x U_c`` scores plus ``O(N log N)``, and memory is ``O(N·K + U)``: no
``N x N`` and no ``U x U`` matrix is ever built.

``K`` triplets per anchor (``per_anchor``): the anchor's ``K`` best candidates are its positives
(the first is the miner's positive); the negatives continue the miner's rule past its first
choice, among the candidates that are not one of the positives and score below ``upper``
(semi-hard: from the lowest score >= ``threshold`` upwards, then from the highest score below it
downwards; hard: from the lowest score upwards). Negative ``i`` goes with positive ``i``. With
``K = 1`` this is exactly :meth:`TripletMiner.__call__`. The pure-PyTorch definitions are
:func:`medtrim_ext.ops.reference.mine_k_from_scores` and :func:`~medtrim_ext.ops.reference.top_k_from_scores`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import ops
from ..entities.meta_entities import MetaEntities
from ..entities.triplets import Triplets


class CollectionTriplets(NamedTuple):
    """``K`` triplets per anchor: ``positive`` and ``negative`` int64 ``(N, K)`` index the
    candidates (-1: none), ``positive_score`` and ``negative_score`` float32 ``(N, K)`` (NaN:
    none). Slot ``i`` of a row is the triplet (anchor, positive[i], negative[i])."""

    positive: torch.Tensor
    negative: torch.Tensor
    positive_score: torch.Tensor
    negative_score: torch.Tensor

    @property
    def per_anchor(self) -> int:
        return self.positive.shape[1]

    def triplets(self) -> Triplets:
        """The full triplets as a flat :class:`Triplets` (anchor-major, slot order)."""
        keep = (self.positive >= 0) & (self.negative >= 0)
        rows = torch.arange(self.positive.shape[0], device=self.positive.device)
        anchor = rows[:, None].expand_as(self.positive)
        return Triplets(anchor[keep], self.positive[keep], self.negative[keep])


class Neighbors(NamedTuple):
    """Each anchor's ``K`` candidates with the highest meta-entity scores, best first:
    ``index`` int64 ``(N, K)`` (-1: fewer candidates) and ``score`` float32 ``(N, K)`` (NaN)."""

    index: torch.Tensor
    score: torch.Tensor


def folded(miner, anchors: MetaEntities, candidates: MetaEntities | None, anchor_ids, candidate_ids,
           semi_hard: torch.Tensor, tie_seed, k: int, negatives: bool, min_positive_score: float):
    """Run the folded kernel: distinct records of both sets (:meth:`MetaEntities.unique`), then
    ``ops.mine_folded``. Returns (positive, negative, positive_score, negative_score)."""
    a_unique, a_inverse, _ = anchors.unique()
    if candidates is None:
        c_unique, c_inverse = a_unique, a_inverse
    else:
        c_unique, c_inverse, _ = candidates.unique()
    return ops.mine_folded(a_unique, a_inverse, anchor_ids, semi_hard, c_unique, c_inverse,
                           candidate_ids, miner.w_dis, miner.w_adj, miner.w_dir, miner.threshold,
                           miner.upper, min_positive_score, tie_seed, k, negatives)


__all__ = ["CollectionTriplets", "Neighbors", "folded"]
