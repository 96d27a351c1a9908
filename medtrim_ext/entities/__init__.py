"""Stage 2, meta-entities: what the miner scores. :class:`MetaEntities` packs the diseases,
adjectives and directions of N reports into bit masks for the kernels; a :class:`Vocabulary`
fixes their columns; :mod:`.synthetic` draws seeded records with chest X-ray statistics;
:class:`Triplets` (:mod:`.triplets`) is the (anchor, positive, negative) index type that the ops,
the miner and the losses share.

    >>> from medtrim_ext.entities import MetaEntities
    >>> ents = MetaEntities.from_records([{"pleural effusion": {"adjs": ["small"], "dirs": ["left"]}}, {}])
"""

from __future__ import annotations

from .meta_entities import MetaEntities
from .triplets import Triplets, default_ids
from .vocabulary import NO_FINDING, Vocabulary

__all__ = ["MetaEntities", "NO_FINDING", "Triplets", "Vocabulary", "default_ids"]
