"""MedTrimObjective: in-batch mining plus the multimodal triplet loss, with training statistics."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .entities import MetaEntities
from .loss import MultimodalTripletLoss, reduce_losses
from .mining import TripletMiner, Triplets


class ObjectiveOutput(NamedTuple):
    """What :class:`MedTrimObjective` returns. ``loss = loss_img + loss_txt``.

    ``stats`` holds detached 0-d tensors (no host synchronisation; call ``.item()`` to log):
    ``valid_triplets`` (int64), ``valid_fraction``, ``pos_score`` / ``neg_score`` (mean
    meta-entity score of the positives / negatives over the valid triplets, NaN without any), and
    ``active_fraction`` (share of valid triplets with a nonzero loss).
    """

    loss: torch.Tensor
    loss_img: torch.Tensor
    loss_txt: torch.Tensor
    triplets: Triplets
    stats: dict


class MedTrimObjective(torch.nn.Module):
    """Mines one triplet per sample from meta-entities and applies the multimodal triplet loss.

    >>> objective = MedTrimObjective(TripletMiner(), MultimodalTripletLoss(margin=0.3))
    >>> out = objective(img_emb, txt_emb, entities)
    >>> out.loss.backward()

    Without candidates the batch mines among itself (a sample never pairs with itself). With
    ``cand_img``, ``cand_txt`` and ``cand_entities`` (a memory bank or an all-gathered batch),
    positives and negatives come from the candidates; pass ``anchor_ids``/``candidate_ids`` so a
    sample does not pair with its own copy among them. Mining never tracks gradients.
    """

    def __init__(self, miner: TripletMiner | None = None, loss: MultimodalTripletLoss | None = None):
        super().__init__()
        self.miner = miner if miner is not None else TripletMiner()
        self.loss = loss if loss is not None else MultimodalTripletLoss()
        if not isinstance(self.miner, TripletMiner):
            raise TypeError(f"miner must be a TripletMiner, got {type(self.miner).__name__}")
        if not isinstance(self.loss, MultimodalTripletLoss):
            raise TypeError(f"loss must be a MultimodalTripletLoss, got {type(self.loss).__name__}")

    def forward(self, img_emb: torch.Tensor, txt_emb: torch.Tensor, entities: MetaEntities, *,
                cand_img: torch.Tensor | None = None, cand_txt: torch.Tensor | None = None,
                cand_entities: MetaEntities | None = None, anchor_ids: torch.Tensor | None = None,
                candidate_ids: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> ObjectiveOutput:
        if not isinstance(entities, MetaEntities):
            raise TypeError(f"entities must be MetaEntities, got {type(entities).__name__}")
        if isinstance(img_emb, torch.Tensor) and img_emb.dim() >= 1 and len(entities) != img_emb.shape[0]:
            raise ValueError(f"entities has {len(entities)} samples but img_emb has "
                             f"{img_emb.shape[0]} rows")
        has_bank = cand_img is not None or cand_txt is not None or cand_entities is not None
        if has_bank:
            if cand_img is None or cand_txt is None or cand_entities is None:
                raise ValueError("a candidate set needs cand_img, cand_txt and cand_entities together")
            if len(cand_entities) != cand_img.shape[0]:
                raise ValueError(f"cand_entities has {len(cand_entities)} samples but cand_img has "
                                 f"{cand_img.shape[0]} rows")
        with torch.no_grad():
            triplets = self.miner(entities, cand_entities, anchor_ids=anchor_ids,
                                  candidate_ids=candidate_ids, generator=generator)
        per_img, per_txt, _ = self.loss.per_triplet(img_emb, txt_emb, triplets,
                                                    cand_img=cand_img, cand_txt=cand_txt)
        loss_img, loss_txt = reduce_losses(per_img, per_txt, *triplets, self.loss.reduction)
        stats = self._stats(entities, cand_entities, triplets, per_img, per_txt)
        return ObjectiveOutput(loss_img + loss_txt, loss_img, loss_txt, triplets, stats)

    @torch.no_grad()
    def _stats(self, entities, cand_entities, triplets, per_img, per_txt) -> dict:
        valid = triplets.valid
        count = valid.sum()
        denom = count.clamp_min(1).float()
        pos, neg = self.miner.triplet_scores(entities, triplets, cand_entities)
        nan = torch.tensor(float("nan"), device=pos.device)

        def masked_mean(x):
            return torch.where(count > 0, torch.where(valid, x, 0).sum() / denom, nan)

        active = valid & ((per_img + per_txt) > 0)
        return {
            "valid_triplets": count,
            "valid_fraction": count.float() / max(len(valid), 1),
            "pos_score": masked_mean(pos),
            "neg_score": masked_mean(neg),
            "active_fraction": active.sum().float() / denom,
        }
