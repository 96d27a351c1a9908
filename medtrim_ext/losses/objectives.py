"""Training objectives with one call signature: MedTrim (mining + triplet loss), InfoNCE, InfoNCE
with meta-entity soft targets, and weighted sums of them.

Every objective is a ``torch.nn.Module`` called as ``objective(img_emb, txt_emb, entities,
**keywords)`` and returning an :class:`ObjectiveOutput`; each takes the keywords it uses and no
other (a misspelt or foreign keyword raises ``TypeError``)::

    out = MedTrimObjective()(img_emb, txt_emb, entities, cand_img=None, cand_txt=None,
                             cand_entities=None, anchor_ids=None, candidate_ids=None,
                             triplets=None, generator=None, count_reducer=None, timer=None)
    out = InfoNCEObjective()(img_emb, txt_emb, entities, cand_img=None, cand_txt=None,
                             own_index=None, timer=None)
    out = SoftInfoNCEObjective()(img_emb, txt_emb, entities, cand_img=None, cand_txt=None,
                                 cand_entities=None, own_index=None, timer=None)
    out.loss.backward()

- ``img_emb``/``txt_emb`` ``(B, D)``: the queries (row k of each is sample k), ``entities`` their
  :class:`~medtrim_ext.MetaEntities`.
- ``cand_*``: what they are compared with (a memory bank, an all-gathered global batch); default:
  the batch itself. ``anchor_ids``/``candidate_ids``: sample ids, so that a sample never pairs with
  its own copy among the candidates. ``own_index``: where each query's own pair sits among the
  candidates (default ``arange(B)``: the batch first, as ``MemoryBank.candidates`` and the
  all-gathers of :mod:`medtrim_ext.training.distributed` lay them out, after an offset of
  ``rank * B`` under torch.distributed).
- ``count_reducer``: under data parallelism, a function from this process's count of valid
  triplets to the divisor that makes DDP's averaged update equal that of one process holding the
  whole global batch (:func:`medtrim_ext.training.distributed.ddp_count_reducer`).
- ``timer``: anything with a ``phase(name)`` context manager (``StepTimer``), to time mining and
  the loss separately.

They compose: ``CompositeObjective({"medtrim": MedTrimObjective(), "infonce": InfoNCEObjective()})``
takes the keywords of all its parts and passes each part only those in its own signature
(:func:`objective_keywords`); a keyword that no part takes raises ``TypeError``.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Callable, Mapping, NamedTuple

import torch

from ..entities.meta_entities import MetaEntities
from .triplet import MultimodalTripletLoss, reduce_losses
from ..entities.triplets import Triplets
from ..mining.miner import TripletMiner
from ..utils.checks import check_instance


class ObjectiveOutput(NamedTuple):
    """What an objective returns. ``loss = loss_img + loss_txt``: for MedTrim the image-anchored
    and text-anchored triplet terms, for InfoNCE the image->text and text->image halves, for a
    composite the weighted sums of its parts' halves.

    ``triplets``: the mined (or given) :class:`Triplets` of a MedTrim objective, else ``None``.
    ``stats`` holds detached 0-d tensors (no host synchronisation; call ``.item()`` to log). A
    MedTrim objective reports ``valid_triplets`` (int64), ``valid_fraction``, ``pos_score`` /
    ``neg_score`` (mean meta-entity score of the positives / negatives over the valid triplets, NaN
    without any) and ``active_fraction`` (share of valid triplets with a nonzero loss); InfoNCE
    reports ``logit_scale``; a composite prefixes its parts' stats and losses with their names.
    """

    loss: torch.Tensor
    loss_img: torch.Tensor
    loss_txt: torch.Tensor
    triplets: Triplets | None
    stats: dict


def phase(timer, name: str):
    """``timer.phase(name)``, or nothing without a timer."""
    return timer.phase(name) if timer is not None else contextlib.nullcontext()


def check_queries(img_emb, entities, cand_img, cand_txt, cand_entities) -> None:
    """The checks every objective shares: entities per query row, a complete candidate set."""
    if not isinstance(entities, MetaEntities):
        raise TypeError(f"entities must be MetaEntities, got {type(entities).__name__}")
    if isinstance(img_emb, torch.Tensor) and img_emb.dim() >= 1 and len(entities) != img_emb.shape[0]:
        raise ValueError(f"entities has {len(entities)} samples but img_emb has "
                         f"{img_emb.shape[0]} rows")
    if cand_img is not None or cand_txt is not None or cand_entities is not None:
        if cand_img is None or cand_txt is None or cand_entities is None:
            raise ValueError("a candidate set needs cand_img, cand_txt and cand_entities together")
        if not isinstance(cand_entities, MetaEntities):
            raise TypeError(f"cand_entities must be MetaEntities, got {type(cand_entities).__name__}")
        if isinstance(cand_img, torch.Tensor) and cand_img.dim() >= 1 and len(cand_entities) != cand_img.shape[0]:
            raise ValueError(f"cand_entities has {len(cand_entities)} samples but cand_img has "
                             f"{cand_img.shape[0]} rows")


class MedTrimObjective(torch.nn.Module):
    """Mines one triplet per sample from meta-entities and applies the multimodal triplet loss:
    the published MedTrim objective.

    >>> objective = MedTrimObjective(TripletMiner(), MultimodalTripletLoss(margin=0.3))
    >>> out = objective(img_emb, txt_emb, entities)
    >>> out.loss.backward()

    Without candidates the batch mines among itself (a sample never pairs with itself). With
    ``cand_img``, ``cand_txt`` and ``cand_entities`` (a memory bank or an all-gathered batch),
    positives and negatives come from the candidates; pass ``anchor_ids``/``candidate_ids`` so a
    sample does not pair with its own copy among them. With ``triplets`` (e.g. the published
    offline triplets, indexing the batch's rows) nothing is mined. Mining never tracks gradients;
    ``generator`` seeds its random choices (:meth:`TripletMiner.draw`).

    The loss is the mean over the valid triplets (the loss's ``reduction="sum"`` sums instead);
    ``count_reducer`` replaces the divisor under data parallelism (see the module docstring).
    """

    def __init__(self, miner: TripletMiner | None = None, loss: MultimodalTripletLoss | None = None):
        super().__init__()
        self.miner = check_instance("miner", miner if miner is not None else TripletMiner(), TripletMiner)
        self.loss = check_instance("loss", loss if loss is not None else MultimodalTripletLoss(),
                                   MultimodalTripletLoss)
        if self.loss.reduction == "none":
            raise ValueError("MedTrimObjective needs a loss with reduction 'mean' or 'sum' "
                             "(per-triplet losses: MultimodalTripletLoss.per_triplet)")

    def forward(self, img_emb: torch.Tensor, txt_emb: torch.Tensor, entities: MetaEntities, *,
                cand_img: torch.Tensor | None = None, cand_txt: torch.Tensor | None = None,
                cand_entities: MetaEntities | None = None, anchor_ids: torch.Tensor | None = None,
                candidate_ids: torch.Tensor | None = None, triplets: Triplets | None = None, generator: torch.Generator | None = None,
                count_reducer: Callable[[torch.Tensor], torch.Tensor] | None = None,
                timer=None) -> ObjectiveOutput:
        check_queries(img_emb, entities, cand_img, cand_txt, cand_entities)
        with phase(timer, "mining"):
            if triplets is None:
                with torch.no_grad():
                    triplets = self.miner(entities, cand_entities, anchor_ids=anchor_ids,
                                          candidate_ids=candidate_ids, generator=generator)
        with phase(timer, "loss_forward"):
            per_img, per_txt, indices = self.loss.per_triplet(img_emb, txt_emb, triplets,
                                                              cand_img=cand_img, cand_txt=cand_txt)
            triplets = Triplets(*indices)
            if count_reducer is None or self.loss.reduction == "sum":
                loss_img, loss_txt = reduce_losses(per_img, per_txt, *triplets, self.loss.reduction)
            else:
                divisor = count_reducer(triplets.valid.sum()).clamp_min(1)
                loss_img, loss_txt = per_img.sum() / divisor, per_txt.sum() / divisor
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


def objective_keywords(objective: torch.nn.Module) -> frozenset[str] | None:
    """The keyword arguments ``objective`` takes besides ``(img_emb, txt_emb, entities)``: the
    names in its ``forward``'s signature after the first three positional parameters (a
    :class:`CompositeObjective`: those of its parts); ``None`` when it takes any keyword
    (``**kwargs``)."""
    if isinstance(objective, CompositeObjective):
        return objective.keywords
    params = list(inspect.signature(objective.forward).parameters.values())
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    positional = [p for p in params if p.kind in (inspect.Parameter.POSITIONAL_ONLY,
                                                   inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    named = positional[3:] + [p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]
    return frozenset(p.name for p in named)


def select_keywords(keywords: frozenset[str] | None, kwargs: dict) -> dict:
    """The part of ``kwargs`` that an objective taking ``keywords`` accepts (all with ``None``)."""
    if keywords is None:
        return kwargs
    return {k: v for k, v in kwargs.items() if k in keywords}


class CompositeObjective(torch.nn.Module):
    """A weighted sum of objectives, each called with its own share of the arguments.

    >>> objective = CompositeObjective({"medtrim": MedTrimObjective(), "infonce": InfoNCEObjective()},
    ...                                weights={"medtrim": 1.0, "infonce": 1.0})
    >>> out = objective(img_emb, txt_emb, entities)   # out.loss = 1.0 * medtrim + 1.0 * infonce

    ``weights`` default to 1 for every part. Every part gets ``img_emb``, ``txt_emb`` and
    ``entities``, and of the keywords only those its ``forward`` names (read once, when the
    composite is built: :func:`objective_keywords`; a part whose ``forward`` takes ``**kwargs``
    gets them all); a keyword that no part takes raises ``TypeError`` naming it. The output's
    ``triplets`` are those of the (one) part that mines; its ``stats`` hold every part's stats and
    unweighted loss under ``"<name>/<key>"``.
    """

    def __init__(self, parts: Mapping[str, torch.nn.Module], weights: Mapping[str, float] | None = None):
        super().__init__()
        if not parts:
            raise ValueError("a composite objective needs at least one part")
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(parts))
        if unknown:
            raise ValueError(f"weights name parts that do not exist: {unknown} (parts: {sorted(parts)})")
        for name, part in parts.items():
            if not isinstance(part, torch.nn.Module):
                raise TypeError(f"part {name!r} must be an objective module, got {type(part).__name__}")
            if "/" in name or "." in name:
                raise ValueError(f"part names cannot contain '/' or '.', got {name!r}")
        for name, w in weights.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not w >= 0 or w == float("inf"):
                raise ValueError(f"weight of {name!r} must be a finite number >= 0, got {w!r}")
        self.parts = torch.nn.ModuleDict(dict(parts))
        self.weights = {name: float(weights.get(name, 1.0)) for name in parts}
        if not any(self.weights.values()):  # the loss would be 0 whatever the model: nothing trains
            raise ValueError(f"weights are all 0 ({self.weights}): at least one part needs a weight > 0")
        self._part_keywords = {name: objective_keywords(part) for name, part in parts.items()}
        taken = list(self._part_keywords.values())
        #: the keywords this composite takes: the union of its parts' (None: any)
        self.keywords: frozenset[str] | None = None if None in taken else frozenset().union(*taken)

    def extra_repr(self) -> str:
        return f"weights={self.weights}"

    def forward(self, img_emb: torch.Tensor, txt_emb: torch.Tensor, entities: MetaEntities | None = None,
                **kwargs) -> ObjectiveOutput:
        if self.keywords is not None:
            unknown = sorted(set(kwargs) - self.keywords)
            if unknown:
                raise TypeError(f"CompositeObjective got unexpected keyword argument(s) {unknown}: no "
                                f"part takes them (the parts take {sorted(self.keywords)})")
        loss_img = loss_txt = None
        triplets, stats = None, {}
        for name, part in self.parts.items():
            out = part(img_emb, txt_emb, entities, **select_keywords(self._part_keywords[name], kwargs))
            w = self.weights[name]
            loss_img = w * out.loss_img if loss_img is None else loss_img + w * out.loss_img
            loss_txt = w * out.loss_txt if loss_txt is None else loss_txt + w * out.loss_txt
            if out.triplets is not None:
                triplets = out.triplets
            stats[f"{name}/loss"] = out.loss.detach()
            stats.update({f"{name}/{k}": v for k, v in out.stats.items()})
        return ObjectiveOutput(loss_img + loss_txt, loss_img, loss_txt, triplets, stats)
