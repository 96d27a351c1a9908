"""The training side of the objectives: build the public objective a config names, and call it on
the global batch.

The objectives themselves are the public ones (:mod:`medtrim_ext.losses.objectives`,
:mod:`medtrim_ext.losses.infonce`): ``objective.kind`` names one part or a sum of parts joined by
``+`` (``medtrim``, ``medtrim_offline``, ``infonce``, ``soft_infonce``; e.g. ``medtrim+infonce``),
weighted by ``objective.weights``. This module only adds what a training step needs around them:
under torch.distributed every process all-gathers the embeddings (with gradients), meta-entities
and sample ids, so mining and the InfoNCE logits see the global batch; with ``memory_bank`` the
candidates also hold recent samples; and the MedTrim mean is taken over the global batch's valid
triplets, so that after DDP averages the gradients over the ``W`` processes the update equals one
process training on the whole global batch (InfoNCE: the mean over local queries, each scored
against the global batch, needs nothing more).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..losses.infonce import InfoNCELoss, InfoNCEObjective, SoftInfoNCEObjective
from ..entities.meta_entities import MetaEntities
from ..losses.triplet import MultimodalTripletLoss
from ..entities.triplets import Triplets
from ..losses.memory_bank import MemoryBank
from ..mining.miner import MINER_DEFAULTS, TripletMiner
from ..losses.objectives import CompositeObjective, MedTrimObjective, objective_keywords, select_keywords
from .config import ObjectiveConfig, objective_parts
from .distributed import DistContext, ddp_count_reducer, gather, gather_entities, gather_with_grad
from .timing import StepTimer


@dataclass
class StepLoss:
    """``loss`` is what to back-propagate; ``logs`` holds detached 0-d tensors for the log."""

    loss: torch.Tensor
    logs: dict = field(default_factory=dict)


def build_miner(cfg: ObjectiveConfig) -> TripletMiner:
    return TripletMiner(**{name: getattr(cfg, name) for name in MINER_DEFAULTS.as_kwargs()})


def build_objective_module(cfg: ObjectiveConfig, miner: TripletMiner | None = None) -> torch.nn.Module:
    """The public objective ``cfg.kind`` names: one part, or a :class:`CompositeObjective`."""
    miner = build_miner(cfg) if miner is None else miner
    parts: dict[str, torch.nn.Module] = {}
    for name in objective_parts(cfg.kind):
        if name in ("medtrim", "medtrim_offline"):
            parts[name] = MedTrimObjective(miner, MultimodalTripletLoss(margin=cfg.margin))
        elif name == "infonce":
            parts[name] = InfoNCEObjective(InfoNCELoss(logit_temperature=cfg.logit_temperature))
        else:  # soft_infonce: its target score may weigh the descriptors differently
            scorer = TripletMiner(*cfg.soft_weights) if cfg.soft_weights else miner
            parts[name] = SoftInfoNCEObjective(InfoNCELoss(logit_temperature=cfg.logit_temperature), scorer,
                                               own_weight=cfg.soft_own_weight,
                                               target_temperature=cfg.target_temperature)
    if len(parts) == 1 and not cfg.weights:
        return next(iter(parts.values()))
    return CompositeObjective(parts, cfg.weights)


class ObjectiveStep(torch.nn.Module):
    """Calls the configured objective on one step's batch (see the module docstring).

    - With ``offline`` the batch brings its triplets (the published offline mode): the ``3T`` rows
      are anchors, positives, negatives, so nothing is gathered or mined.
    - The miner's random choices (semi-hard draws, the tie seed) come from a generator seeded by
      ``(seed, step)``: a resumed run mines the same triplets, and torch's global generator (the
      dropout masks) is left alone.
    - The objective gets only the keywords it takes (:func:`objective_keywords`): InfoNCE no
      mining arguments, MedTrim no ``own_index``.
    - The memory bank is a submodule: :meth:`state_dict` holds the objective's parameters (e.g.
      InfoNCE's logit temperature) and the bank's entries (``bank.*``). :meth:`checkpoint_state` /
      :meth:`load_checkpoint_state` save and restore it.
    """

    def __init__(self, cfg: ObjectiveConfig, embed_dim: int, seed: int = 0):
        super().__init__()
        self.miner = build_miner(cfg)
        self.objective = build_objective_module(cfg, self.miner)
        self.offline = "medtrim_offline" in objective_parts(cfg.kind)
        self.seed = int(seed)
        self.keywords = objective_keywords(self.objective)
        self.bank = MemoryBank(cfg.memory_bank, embed_dim) if cfg.memory_bank and not self.offline else None

    def generator(self, step: int) -> torch.Generator:
        """The miner's generator at ``step``: a function of ``(seed, step)`` only."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + step)

    def forward(self, img: torch.Tensor, txt: torch.Tensor, batch: dict, ctx: DistContext,
                timer: StepTimer, generator: torch.Generator | None = None, *, step: int = 0) -> StepLoss:
        ents: MetaEntities = batch["entities"]
        ids = batch["index"]
        kwargs: dict = {"generator": generator if generator is not None else self.generator(step),
                        "timer": timer}
        current = None
        if self.offline:
            given = batch.get("triplets")
            kwargs["triplets"] = given if given is not None else offline_triplets(img.shape[0] // 3, img.device)
        else:
            with timer.phase("mining"):  # the all-gather is charged to mining
                if ctx.enabled or self.bank is not None:
                    current = (gather_with_grad(img, ctx), gather_with_grad(txt, ctx),
                               gather_entities(ents, ctx), gather(ids, ctx))
                    cand = current if self.bank is None else self.bank.candidates(*current)
                    kwargs.update(cand_img=cand[0], cand_txt=cand[1], cand_entities=cand[2],
                                  anchor_ids=ids, candidate_ids=cand[3])
                else:
                    kwargs.update(anchor_ids=ids)
                kwargs["own_index"] = ctx.rank * img.shape[0] + torch.arange(img.shape[0], device=img.device)
        if ctx.enabled:
            kwargs["count_reducer"] = ddp_count_reducer(ctx)
        out = self.objective(img, txt, ents, **select_keywords(self.keywords, kwargs))
        if self.bank is not None:
            self.bank.push(current[0].detach(), current[1].detach(), current[2], current[3])
        # the objective's statistics (mean positive / negative score: NaN without a triplet), the
        # same keys on every process so that the log's all-reduce lines up
        logs = {"loss_img": out.loss_img.detach(), "loss_txt": out.loss_txt.detach(),
                **{k: v.float() for k, v in out.stats.items()}}
        return StepLoss(out.loss, logs)

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoint_state(self) -> dict:
        """``{"objective": state_dict}``: the objective's parameters and buffers and the bank's."""
        return {"objective": self.state_dict()}

    def load_checkpoint_state(self, state: dict) -> None:
        """Restore what :meth:`checkpoint_state` returned. A checkpoint of a run without a bank
        leaves this one's bank empty (and a bank's entries are ignored by a run without one);
        checkpoints written before the bank was a module hold it under ``"memory_bank"``."""
        self.load_state_dict(state["objective"], strict=False)
        if self.bank is not None and state.get("memory_bank") is not None:
            self.bank.load_state_dict(state["memory_bank"])  # the earlier format: converted


def build_objective(cfg: ObjectiveConfig, embed_dim: int, seed: int = 0) -> ObjectiveStep:
    return ObjectiveStep(cfg, embed_dim, seed)


def offline_triplets(t: int, device) -> Triplets:
    """The local triplets of an offline batch laid out as anchors, positives, negatives."""
    k = torch.arange(t, device=device)
    return Triplets(k, k + t, k + 2 * t)
