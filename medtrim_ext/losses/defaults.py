"""The losses' and objectives' defaults, written once: the modules' constructors and the training
config (:class:`medtrim_ext.training.config.ObjectiveConfig`) both read :data:`OBJECTIVE_DEFAULTS`,
as the miner's settings come from :data:`medtrim_ext.mining.MINER_DEFAULTS` (the offline pools'
size is :data:`medtrim_ext.mining.offline.OFFLINE_POOL_SIZE`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ObjectiveSettings:
    """Defaults of :class:`~medtrim_ext.MultimodalTripletLoss` (``margin``),
    :class:`~medtrim_ext.losses.InfoNCELoss` (``logit_temperature``: the initial temperature of the
    logits, ``s = 1 / logit_temperature``, learnable by default; ``max_logit_scale``: the cap on
    ``s``, CLIP's 100) and :class:`~medtrim_ext.losses.SoftInfoNCEObjective` (``own_weight``: the
    target mass on a query's own pair; ``target_temperature``: the temperature of the softmax over
    meta-entity scores that spreads the rest of the target)."""

    margin: float = 0.3
    logit_temperature: float = 0.07
    max_logit_scale: float = 100.0
    own_weight: float = 0.5
    target_temperature: float = 0.1

    def as_kwargs(self) -> dict:
        return asdict(self)


OBJECTIVE_DEFAULTS = ObjectiveSettings()

#: The triplet margin's range: cosine distances lie in [0, 2], so d(a,p) - d(a,n) lies in [-2, 2];
#: a margin above 2 keeps every triplet active whatever the embeddings (1e300 overflowed to inf), and
#: a negative one lets the hinge be 0 for triplets still in the wrong order.
MARGIN_RANGE = (0.0, 2.0)
#: The largest ``max_logit_scale`` InfoNCE accepts (a temperature of 1e-4; CLIP caps at 100): at
#: 1e20 the float32 logits and gradients were absurd (gradients near 1e19) instead of refused.
LOGIT_SCALE_LIMIT = 1e4

__all__ = ["LOGIT_SCALE_LIMIT", "MARGIN_RANGE", "OBJECTIVE_DEFAULTS", "ObjectiveSettings"]
