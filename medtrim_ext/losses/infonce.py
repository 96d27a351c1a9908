"""InfoNCE: the symmetric CLIP contrastive loss (the baseline MedTrim is compared with), and
InfoNCE with soft targets from the meta-entity score (same findings, same side and size: a
positive, not a negative)."""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..entities.meta_entities import MetaEntities
from ..mining.miner import TripletMiner
from ..utils.checks import check_ids, check_instance, check_number, check_tensor, reject_renamed
from .defaults import LOGIT_SCALE_LIMIT, OBJECTIVE_DEFAULTS
from .objectives import ObjectiveOutput, check_queries, phase

D = OBJECTIVE_DEFAULTS
# training-mode calls after which a learnable logit temperature that still holds its initial value
# and an uncleared gradient is reported (see InfoNCELoss: it is most likely in no optimizer)
FROZEN_CHECK_CALLS = 10


class InfoNCELoss(nn.Module):
    """Symmetric InfoNCE (CLIP) over L2-normalised image and text embeddings.

    With logit scale s = exp(log_scale) (clamped to ``max_logit_scale``), image query k scores
    every candidate text j as ``s * cos(img_k, cand_txt_j)`` and text query k every candidate
    image; the loss is the mean over the local queries of ``(CE_i2t + CE_t2i) / 2``, the target of
    query k being its own pair at ``targets[k]`` among the candidates.

    >>> crit = InfoNCELoss(logit_temperature=0.07)
    >>> loss = crit(img_emb, txt_emb)                          # in-batch: candidates = the batch
    >>> loss = crit(img_emb, txt_emb, cand_img=all_img, cand_txt=all_txt,
    ...             targets=rank * B + torch.arange(B))        # all-gathered global batch

    - Without candidates the batch is its own candidate set (targets ``arange(B)``); with
      ``cand_img``/``cand_txt`` ``(M, D)`` the default targets are also ``arange(B)`` (the local
      batch first, as ``MemoryBank.candidates`` returns it).
    - ``targets`` may also be soft: a float ``(B, M)`` matrix whose rows are distributions over
      the candidates (non-negative, summing to 1), as :func:`soft_targets` makes them; the loss is
      then the cross-entropy with those distributions, in both directions.
    - ``logit_temperature``: the (initial) temperature of the logits, ``s = 1 / logit_temperature``
      (the temperature of the soft targets is :class:`SoftInfoNCEObjective`'s
      ``target_temperature``). ``learnable=True``: the log scale is a parameter, initialised to
      ``log(1 / logit_temperature)``; otherwise a fixed buffer. The clamp stops its gradient above
      ``max_logit_scale`` (CLIP: 100), which may be at most ``LOGIT_SCALE_LIMIT`` (1e4).
    - A learnable scale must be in the optimizer: ``AdamW([*model.parameters(),
      *objective.parameters()])``. If after ``FROZEN_CHECK_CALLS`` (10) calls in training mode the
      scale still holds its initial value while a gradient has accumulated in it (nothing steps or
      clears it), a ``UserWarning`` says so, once (one host synchronisation, once).
    - ``temperature=`` (the old name) raises a ``TypeError`` naming ``logit_temperature``.
    - The arithmetic is float32 whatever the embeddings' dtype (bf16 under autocast); the loss is
      a float32 scalar. Wrong shapes, devices, targets out of range and NaN/Inf embeddings raise
      errors naming the argument (one host synchronisation per call).
    """

    def __init__(self, logit_temperature: float = D.logit_temperature, learnable: bool = True,
                 max_logit_scale: float = D.max_logit_scale, **renamed):
        super().__init__()
        reject_renamed("InfoNCELoss", renamed, {"temperature": "logit_temperature"})
        check_number("logit_temperature", logit_temperature, positive=True)
        check_number("max_logit_scale", max_logit_scale, positive=True)
        if max_logit_scale > LOGIT_SCALE_LIMIT:
            raise ValueError(f"max_logit_scale must be <= {LOGIT_SCALE_LIMIT:g} (a temperature of "
                             f"{1 / LOGIT_SCALE_LIMIT:g}; larger scales give absurd float32 logits "
                             f"and gradients), got {max_logit_scale!r}")
        if 1.0 / logit_temperature > max_logit_scale:
            raise ValueError(f"1 / logit_temperature = {1.0 / logit_temperature:g} exceeds "
                             f"max_logit_scale={max_logit_scale:g}")
        init = torch.tensor(math.log(1.0 / logit_temperature), dtype=torch.float32)
        if learnable:
            self.log_scale = nn.Parameter(init)
        else:
            self.register_buffer("log_scale", init)
        self.learnable = bool(learnable)
        self.max_logit_scale = float(max_logit_scale)
        self._initial_log_scale = float(init)
        self._training_calls = 0

    def extra_repr(self) -> str:
        return (f"logit_temperature={1.0 / self.logit_scale.item():.4g}, learnable={self.learnable}, "
                f"max_logit_scale={self.max_logit_scale}")

    @property
    def logit_scale(self) -> torch.Tensor:
        """The current scale s = 1 / temperature (0-d, clamped, differentiable where learnable)."""
        return self.log_scale.clamp(max=math.log(self.max_logit_scale)).exp()

    def forward(self, img: torch.Tensor, txt: torch.Tensor, *, cand_img: torch.Tensor | None = None,
                cand_txt: torch.Tensor | None = None, targets: torch.Tensor | None = None) -> torch.Tensor:
        i2t, t2i = self.directions(img, txt, cand_img=cand_img, cand_txt=cand_txt, targets=targets)
        return (i2t + t2i) / 2

    def directions(self, img: torch.Tensor, txt: torch.Tensor, *, cand_img: torch.Tensor | None = None,
                   cand_txt: torch.Tensor | None = None, targets: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """The image->text and text->image cross-entropies (``forward`` is their mean)."""
        img, txt, cand_img, cand_txt, targets = _check(img, txt, cand_img, cand_txt, targets)
        self._check_trained()
        # float32 logits even under autocast (which would run the matmuls in half precision)
        with torch.autocast(img.device.type, enabled=False):
            img_n, txt_n = F.normalize(img.float(), dim=1), F.normalize(txt.float(), dim=1)
            cand_img_n = img_n if cand_img is None else F.normalize(cand_img.float(), dim=1)
            cand_txt_n = txt_n if cand_txt is None else F.normalize(cand_txt.float(), dim=1)
            scale = self.logit_scale.float().to(img_n.device)
            i2t = F.cross_entropy(scale * img_n @ cand_txt_n.T, targets)
            t2i = F.cross_entropy(scale * txt_n @ cand_img_n.T, targets)
        return i2t, t2i

    def _check_trained(self) -> None:
        """Warn once when the learnable scale is evidently in no optimizer (see the class doc)."""
        if not (self.training and self.learnable and torch.is_grad_enabled()):
            return
        self._training_calls += 1
        if self._training_calls != FROZEN_CHECK_CALLS:
            return
        p = self.log_scale
        # an optimizer that holds p changes it, and its zero_grad clears p.grad; here neither
        # happened over FROZEN_CHECK_CALLS calls while backward kept adding to p.grad
        if p.requires_grad and p.grad is not None and bool(p.grad.ne(0).any()) and \
                float(p.detach()) == self._initial_log_scale:
            warnings.warn(
                f"InfoNCELoss: its learnable logit temperature has not changed in {FROZEN_CHECK_CALLS} "
                "training calls although gradients accumulate in it: it is in no optimizer. Add the "
                "objective's parameters, e.g. torch.optim.AdamW([*model.parameters(), "
                "*objective.parameters()]), or pass learnable=False for a fixed temperature",
                UserWarning, stacklevel=4)


def _check(img, txt, cand_img, cand_txt, targets):
    named = [("img", img), ("txt", txt)]
    if (cand_img is None) != (cand_txt is None):
        raise ValueError("pass both cand_img and cand_txt, or neither")
    if cand_img is not None:
        named += [("cand_img", cand_img), ("cand_txt", cand_txt)]
    for name, x in named:
        check_tensor(name, x, floating=True)
        if x.dim() != 2:
            raise ValueError(f"{name} must be 2-D (rows, dim), got shape {tuple(x.shape)}")
        if x.device != img.device:
            raise ValueError(f"{name} is on {x.device} but img is on {img.device}")
        if x.shape[1] != img.shape[1]:
            raise ValueError(f"{name} has dimension {x.shape[1]} but img has {img.shape[1]}")
    b = img.shape[0]
    if b == 0 or img.shape[1] == 0:
        raise ValueError(f"img must have at least one row and one dimension, got shape {tuple(img.shape)}")
    if txt.shape[0] != b:
        raise ValueError(f"img and txt must have the same number of rows, got {b} and {txt.shape[0]}")
    m = b
    if cand_img is not None:
        if cand_img.shape[0] != cand_txt.shape[0]:
            raise ValueError(f"cand_img and cand_txt must have the same number of rows, got "
                             f"{cand_img.shape[0]} and {cand_txt.shape[0]}")
        m = cand_img.shape[0]
    soft = isinstance(targets, torch.Tensor) and targets.dtype.is_floating_point and targets.dim() == 2
    if targets is None:
        targets = default_own_index(b, m, img.device)
    elif soft:
        if tuple(targets.shape) != (b, m):
            raise ValueError(f"soft targets must have shape ({b}, {m}) (queries, candidates), got "
                             f"{tuple(targets.shape)}")
        if targets.device != img.device:
            raise ValueError(f"targets is on {targets.device} but img is on {img.device}")
        targets = targets.float()
    else:
        targets = check_ids("targets", targets, b, img.device, owner="img is")
    # one host synchronisation for the value checks
    if soft:
        bad = ~torch.isfinite(targets).all() | (targets < 0).any() | \
            ((targets.sum(1) - 1).abs() > 1e-4).any()
    else:
        bad = ((targets < 0) | (targets >= m)).any()
    checks = [bad]
    checks += [~torch.isfinite(x).all() for _, x in named]
    flags = torch.stack(checks).tolist()
    if flags[0]:
        raise ValueError("soft targets must be finite, >= 0 and sum to 1 per row" if soft else
                         f"targets must lie in [0, {m}) (the candidate rows)")
    for (name, _), bad in zip(named, flags[1:]):
        if bad:
            raise ValueError(f"{name} contains NaN or Inf")
    return img, txt, cand_img, cand_txt, targets


def default_own_index(b: int, m: int, device) -> torch.Tensor:
    """``arange(B)``: each query's own pair when the candidates start with the queries' batch."""
    if m < b:
        raise ValueError(f"the default targets arange({b}) need at least {b} candidates, got {m}; "
                         "pass targets (own_index)")
    return torch.arange(b, device=device)


def soft_targets(scores: torch.Tensor, own_index: torch.Tensor, own_weight: float = D.own_weight,
                 target_temperature: float = D.target_temperature, **renamed) -> torch.Tensor:
    """Target distributions over candidates from meta-entity scores ``(B, M)``::

        T = own_weight * onehot(own_index) + (1 - own_weight) * softmax(scores / target_temperature)

    A query's own pair scores highest (1 for a study with findings, ``w_dis`` for a normal one)
    and so does every candidate with the same findings and descriptors: they share the score
    part of the target instead of being pushed away as negatives, as plain InfoNCE does. A small
    ``target_temperature`` concentrates it on exact matches, a larger one spreads some mass to
    partial matches (same disease, another side). float32, rows sum to 1. ``temperature=`` (the old
    name) raises a ``TypeError`` naming ``target_temperature``.
    """
    reject_renamed("soft_targets", renamed, {"temperature": "target_temperature"})
    if not 0 <= own_weight <= 1:
        raise ValueError(f"own_weight must be in [0, 1], got {own_weight!r}")
    if not target_temperature > 0:
        raise ValueError(f"target_temperature must be > 0, got {target_temperature!r}")
    soft = torch.softmax(scores.float() / target_temperature, dim=1)
    own = F.one_hot(own_index, scores.shape[1]).float()
    return own_weight * own + (1 - own_weight) * soft


class InfoNCEObjective(nn.Module):
    """:class:`InfoNCELoss` as an objective (see :mod:`medtrim_ext.losses.objectives`): each query
    against the candidates of the other modality, its own pair at ``own_index`` the target.
    ``loss_img``/``loss_txt`` are the image->text and text->image halves.

    It needs no meta-entities: ``entities``, when given (the common call
    ``objective(img_emb, txt_emb, entities)``), is only checked against the batch. Its keywords are
    ``cand_img``, ``cand_txt``, ``own_index`` and ``timer``; any other raises a ``TypeError``
    (:class:`~medtrim_ext.losses.CompositeObjective` passes it only these)."""

    def __init__(self, loss: InfoNCELoss | None = None):
        super().__init__()
        self.loss = check_instance("loss", loss if loss is not None else InfoNCELoss(), InfoNCELoss)

    def forward(self, img_emb: torch.Tensor, txt_emb: torch.Tensor, entities: MetaEntities | None = None,
                *, cand_img: torch.Tensor | None = None, cand_txt: torch.Tensor | None = None,
                own_index: torch.Tensor | None = None, timer=None) -> ObjectiveOutput:
        if entities is not None:
            check_queries(img_emb, entities, None, None, None)
        with phase(timer, "loss_forward"):
            i2t, t2i = self.loss.directions(img_emb, txt_emb, cand_img=cand_img, cand_txt=cand_txt,
                                            targets=own_index)
        return ObjectiveOutput((i2t + t2i) / 2, i2t / 2, t2i / 2, None,
                               {"logit_scale": self.loss.logit_scale.detach()})


class SoftInfoNCEObjective(nn.Module):
    """InfoNCE whose targets come from the meta-entity score matrix (MedCLIP's idea of semantic
    targets, with MedTrim's score): studies with the same findings, sides and sizes are positives
    of each other instead of negatives.

    The scores of the queries against the candidates come from the fused score kernel of
    ``miner`` (its weights; nothing is mined), the targets from :func:`soft_targets` with
    ``own_weight`` and ``target_temperature``, and both directions use them (the score is that of
    the query's sample against the candidate's sample, whatever the modality).

    Two temperatures, two names: ``target_temperature`` here spreads the targets over similar
    studies; the logits' (learnable) temperature is that of ``loss``,
    ``InfoNCELoss(logit_temperature=...)``. ``temperature=`` (the old name of the first) raises a
    ``TypeError`` naming ``target_temperature``.
    """

    def __init__(self, loss: InfoNCELoss | None = None, miner: TripletMiner | None = None,
                 own_weight: float = D.own_weight, target_temperature: float = D.target_temperature,
                 **renamed):
        super().__init__()
        reject_renamed("SoftInfoNCEObjective", renamed, {"temperature": "target_temperature"})
        self.loss = check_instance("loss", loss if loss is not None else InfoNCELoss(), InfoNCELoss)
        self.miner = check_instance("miner", miner if miner is not None else TripletMiner(), TripletMiner)
        check_number("own_weight", own_weight)
        check_number("target_temperature", target_temperature)
        if not 0 <= own_weight <= 1:
            raise ValueError(f"own_weight must be in [0, 1], got {own_weight!r}")
        if target_temperature <= 0:
            raise ValueError(f"target_temperature must be > 0, got {target_temperature!r}")
        self.own_weight, self.target_temperature = float(own_weight), float(target_temperature)

    def extra_repr(self) -> str:
        return f"own_weight={self.own_weight}, target_temperature={self.target_temperature}"

    def forward(self, img_emb: torch.Tensor, txt_emb: torch.Tensor, entities: MetaEntities, *,
                cand_img: torch.Tensor | None = None, cand_txt: torch.Tensor | None = None,
                cand_entities: MetaEntities | None = None, own_index: torch.Tensor | None = None,
                timer=None) -> ObjectiveOutput:
        check_queries(img_emb, entities, cand_img, cand_txt, cand_entities)
        with phase(timer, "mining"), torch.no_grad():
            cands = entities if cand_entities is None else cand_entities
            if own_index is None:
                own_index = default_own_index(len(entities), len(cands), entities.device)
            own_index = check_ids("own_index", own_index, len(entities), entities.device)
            scores = self.miner.score_matrix(entities, cand_entities)
            targets = soft_targets(scores, own_index, self.own_weight, self.target_temperature)
        with phase(timer, "loss_forward"):
            i2t, t2i = self.loss.directions(img_emb, txt_emb, cand_img=cand_img, cand_txt=cand_txt,
                                            targets=targets.to(img_emb.device))
        return ObjectiveOutput((i2t + t2i) / 2, i2t / 2, t2i / 2, None,
                               {"logit_scale": self.loss.logit_scale.detach(),
                                "target_own_mass": targets.gather(1, own_index[:, None]).mean()})
