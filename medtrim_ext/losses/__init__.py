"""Stage 4, losses and objectives: the fused multimodal triplet loss (:mod:`.triplet`), InfoNCE and
InfoNCE with meta-entity soft targets (:mod:`.infonce`), the objectives that join mining and a
loss behind one call (:mod:`.objectives`), and the memory bank of past samples to mine among
(:mod:`.memory_bank`); their defaults are written once in :mod:`.defaults`.

    >>> from medtrim_ext.losses import MedTrimObjective
    >>> out = MedTrimObjective()(img_emb, txt_emb, entities)
    >>> out.loss.backward()
"""

from __future__ import annotations

from .defaults import OBJECTIVE_DEFAULTS, ObjectiveSettings
from .infonce import InfoNCELoss, InfoNCEObjective, SoftInfoNCEObjective, soft_targets
from .memory_bank import MemoryBank
from .objectives import CompositeObjective, MedTrimObjective, ObjectiveOutput, objective_keywords
from .triplet import MultimodalTripletLoss

__all__ = ["CompositeObjective", "InfoNCELoss", "InfoNCEObjective", "MedTrimObjective", "MemoryBank",
           "MultimodalTripletLoss", "OBJECTIVE_DEFAULTS", "ObjectiveOutput", "ObjectiveSettings",
           "SoftInfoNCEObjective", "objective_keywords", "soft_targets"]
