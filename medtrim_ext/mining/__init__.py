"""Stage 3, mining: scores of sample pairs from their meta-entities and (anchor, positive,
semi-hard negative) triplets, in batches (:class:`TripletMiner`, fused kernels) or offline in small
random pools as the published code does (:mod:`.offline`).

    >>> from medtrim_ext.mining import TripletMiner
    >>> triplets = TripletMiner()(entities)
"""

from __future__ import annotations

from .miner import MINER_DEFAULTS, TIE_BREAKS, MinerSettings, MiningDraw, TripletMiner, Triplets, default_ids

__all__ = ["MINER_DEFAULTS", "MinerSettings", "MiningDraw", "TIE_BREAKS", "TripletMiner", "Triplets",
           "default_ids"]
