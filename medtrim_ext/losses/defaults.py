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

__all__ = ["OBJECTIVE_DEFAULTS", "ObjectiveSettings"]
