"""The training objectives behind one interface: MedTrim (online or offline triplets) and InfoNCE.

Each objective takes the batch's embeddings and returns the loss to back-propagate. Under
torch.distributed the loss is scaled so that, after DDP averages the gradients over the ``W``
processes, the update equals one process training on the whole global batch:

- MedTrim: ``W * sum(local triplet losses) / (valid triplets in the global batch)``
- InfoNCE: the mean over local queries (each scored against the global batch)

Both rely on :func:`~medtrim_ext.training.distributed.gather_with_grad`, whose backward hands
each process the gradients that all processes computed for its rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..entities import MetaEntities
from ..loss import MultimodalTripletLoss
from ..mining import TripletMiner, Triplets
from .config import ObjectiveConfig
from .distributed import DistContext, all_reduce_sum, gather, gather_entities, gather_with_grad
from .timing import StepTimer


@dataclass
class StepLoss:
    """``loss`` is what to back-propagate; ``logs`` holds detached 0-d tensors for the log."""

    loss: torch.Tensor
    logs: dict = field(default_factory=dict)


class MedTrimStep(torch.nn.Module):
    """Online in-batch mining on meta-entities + :class:`MultimodalTripletLoss`.

    Anchors are this process's samples; candidates are the global batch (all-gathered) plus,
    with ``memory_bank`` > 0, recent samples' detached embeddings. Sample ids (dataset indices)
    keep a sample from pairing with itself or with its own older copy in the bank. With
    ``offline=True`` the batch brings its triplets (the published offline mode) and nothing is mined.
    """

    def __init__(self, cfg: ObjectiveConfig, embed_dim: int, offline: bool = False):
        super().__init__()
        self.miner = TripletMiner(cfg.w_dis, cfg.w_adj, cfg.w_dir, threshold=cfg.threshold,
                                  upper=cfg.upper, semi_hard_prob=cfg.semi_hard_prob)
        self.loss = MultimodalTripletLoss(margin=cfg.margin)
        self.offline = offline
        self._last = None  # (entities, triplets, candidate entities) of the last step, for logs
        self.bank = None
        if cfg.memory_bank and not offline:
            from ..memory_bank import MemoryBank

            self.bank = MemoryBank(cfg.memory_bank, embed_dim)

    def forward(self, img: torch.Tensor, txt: torch.Tensor, batch: dict, ctx: DistContext,
                timer: StepTimer, generator: torch.Generator | None = None) -> StepLoss:
        ents: MetaEntities = batch["entities"]
        ids = batch["index"]
        cand = None
        with timer.phase("mining"):
            if self.offline:
                triplets = batch["triplets"]
            else:
                if ctx.enabled or self.bank is not None:
                    cand = (gather_with_grad(img, ctx), gather_with_grad(txt, ctx),
                            gather_entities(ents, ctx), gather(ids, ctx))
                    current = cand
                    if self.bank is not None:
                        cand = self.bank.candidates(*cand)
                with torch.no_grad():
                    if cand is None:
                        triplets = self.miner(ents, generator=generator)
                    else:
                        triplets = self.miner(ents, cand[2], anchor_ids=ids, candidate_ids=cand[3],
                                              generator=generator)
        with timer.phase("loss_forward"):
            cand_img, cand_txt = (cand[0], cand[1]) if cand is not None else (None, None)
            per_img, per_txt, _ = self.loss.per_triplet(img, txt, triplets, cand_img=cand_img,
                                                        cand_txt=cand_txt)
            valid = triplets.valid
            n_valid = all_reduce_sum(valid.sum(), ctx).clamp_min(1)
            scale = ctx.world_size / n_valid
            loss_img, loss_txt = per_img.sum() * scale, per_txt.sum() * scale
            loss = loss_img + loss_txt
        if self.bank is not None:
            self.bank.push(current[0].detach(), current[1].detach(), current[2], current[3])
        # active share of the valid triplets (0 without any), with no host synchronisation
        active = (((per_img + per_txt) > 0) & valid).sum() / valid.sum().clamp_min(1)
        logs = {"loss_img": loss_img.detach(), "loss_txt": loss_txt.detach(),
                "valid_fraction": valid.float().mean().detach(), "active_fraction": active.detach()}
        self._last = (ents, triplets, cand[2] if cand is not None else None)
        return StepLoss(loss, logs)

    @torch.no_grad()
    def pair_score_logs(self) -> dict:
        """Mean meta-entity score of the last step's positives and negatives (valid triplets)."""
        if self._last is None:
            return {}
        ents, triplets, cand_ents = self._last
        if self.offline:  # local rows: anchors index the batch, and so do positives/negatives
            cand_ents = None
        pos, neg = self.miner.triplet_scores(ents, triplets, cand_ents)
        valid = triplets.valid
        if not bool(valid.any()):
            return {}
        return {"pos_score": pos[valid].mean(), "neg_score": neg[valid].mean()}


class InfoNCEStep(torch.nn.Module):
    """The contrastive (CLIP) baseline: each query against the global batch of the other modality."""

    def __init__(self, cfg: ObjectiveConfig):
        super().__init__()
        from ..contrastive import InfoNCELoss

        self.loss = InfoNCELoss(temperature=cfg.temperature)

    def forward(self, img, txt, batch, ctx: DistContext, timer: StepTimer, generator=None) -> StepLoss:
        with timer.phase("mining"):  # no mining: only the all-gather
            cand_img, cand_txt = gather_with_grad(img, ctx), gather_with_grad(txt, ctx)
            targets = ctx.rank * img.shape[0] + torch.arange(img.shape[0], device=img.device)
        with timer.phase("loss_forward"):
            loss = self.loss(img, txt, cand_img=cand_img, cand_txt=cand_txt, targets=targets)
        return StepLoss(loss, {"logit_scale": self.loss.logit_scale.detach()})

    def pair_score_logs(self) -> dict:
        return {}


def build_objective(cfg: ObjectiveConfig, embed_dim: int) -> torch.nn.Module:
    if cfg.kind == "infonce":
        return InfoNCEStep(cfg)
    return MedTrimStep(cfg, embed_dim, offline=cfg.kind == "medtrim_offline")


def offline_triplets(t: int, device) -> Triplets:
    """The local triplets of an offline batch laid out as anchors, positives, negatives."""
    k = torch.arange(t, device=device)
    return Triplets(k, k + t, k + 2 * t)
