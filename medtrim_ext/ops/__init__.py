"""The kernels as PyTorch ops: ``torch.ops.medtrim.*`` (C++ on the CPU, CUDA on GPUs) behind thin
wrappers (:mod:`.torch_ops`), and the pure-PyTorch reference they equal bit for bit
(:mod:`.reference`). Users call them through :class:`~medtrim_ext.TripletMiner` and
:class:`~medtrim_ext.MultimodalTripletLoss`; the exact semantics are in ``docs/semantics.md``.
"""

from __future__ import annotations

from . import reference
from .torch_ops import mine_folded, mine_triplets, pair_scores, score_matrix, triplet_loss

__all__ = ["mine_folded", "mine_triplets", "pair_scores", "reference", "score_matrix", "triplet_loss"]
