"""Triplets: the (anchor, positive, negative) index type that the ops, the miner and the losses
share. It lives below all of them (here, next to the meta-entities it indexes) so that the pure
reference in :mod:`medtrim_ext.ops.reference` and the miner in :mod:`medtrim_ext.mining.miner`
import it without importing each other. ``medtrim_ext.Triplets`` and
``medtrim_ext.mining.Triplets`` are this class."""

from __future__ import annotations

from typing import NamedTuple

import torch


class Triplets(NamedTuple):
    """Mined triplets as three int64 ``(N,)`` tensors. ``anchor`` indexes the anchors;
    ``positive`` and ``negative`` index the candidate set and are -1 where no triplet exists."""

    anchor: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor

    @property
    def valid(self) -> torch.Tensor:
        """Bool ``(N,)``: rows with both a positive and a negative."""
        return (self.positive >= 0) & (self.negative >= 0)

    def only_valid(self) -> "Triplets":
        """The rows that form a full triplet."""
        keep = self.valid
        return Triplets(self.anchor[keep], self.positive[keep], self.negative[keep])

    def to(self, device) -> "Triplets":
        return Triplets(*(t.to(device) for t in self))


def default_ids(n: int, m: int, self_mining: bool, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids used when none are given: ``arange(N)`` for the anchors; the same ids for self-mining
    (so an anchor never pairs with itself), ids that match no anchor for an external set."""
    anchor_ids = torch.arange(n, device=device)
    return anchor_ids, anchor_ids if self_mining else -1 - torch.arange(m, device=device)


__all__ = ["Triplets", "default_ids"]
