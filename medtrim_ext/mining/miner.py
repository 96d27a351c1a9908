"""TripletMiner: meta-entity scores and (anchor, positive, semi-hard negative) mining."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch

from .. import ops
from ..utils.checks import check_generator, check_ids, check_int, check_number
from ..entities.meta_entities import MetaEntities
# Triplets and default_ids live below both ops and mining (no import circle); re-exported here
from ..entities.triplets import Triplets, default_ids
from .collection import CollectionTriplets, Neighbors, folded


TIE_BREAKS = ("random", "first")


@dataclass(frozen=True)
class MinerSettings:
    """The miner's settings; the defaults are the published MedTrim ones. The one place they are
    written: :class:`TripletMiner`, the training config and the ``medtrim`` command take them from
    :data:`MINER_DEFAULTS`."""

    w_dis: float = 0.85
    w_adj: float = 0.10
    w_dir: float = 0.05
    threshold: float = 0.25
    upper: float = 0.6
    semi_hard_prob: float = 1.0
    tie_break: str = "random"
    min_positive_score: float = 0.0

    def as_kwargs(self) -> dict:
        return asdict(self)


MINER_DEFAULTS = MinerSettings()


class MiningDraw(NamedTuple):
    """The random choices of one mining call: which anchors use the semi-hard rule (bool ``(N,)``
    on the CPU) and the seed of the tie keys (an int64 CPU tensor of one element, drawn without a
    host synchronisation so that ``torch.compile`` can trace it; ``None`` with lowest-index ties)."""

    semi_hard: torch.Tensor
    tie_seed: torch.Tensor | None

    def rows(self, index) -> "MiningDraw":
        """The draw of some anchors (a slice or index tensor), e.g. to mine a large set in chunks
        with the choices of one call."""
        return MiningDraw(self.semi_hard[index], self.tie_seed)


def _check_fraction_args(w_dis, w_adj, w_dir, threshold, upper, semi_hard_prob, min_positive_score):
    for name, value in (("threshold", threshold), ("upper", upper), ("semi_hard_prob", semi_hard_prob)):
        check_number(name, value)
    check_number("min_positive_score", min_positive_score, minimum=0)
    for name, value in (("w_dis", w_dis), ("w_adj", w_adj), ("w_dir", w_dir)):
        check_number(name, value, minimum=0)
        if not math.isfinite(float(torch.tensor(value, dtype=torch.float32))):
            raise ValueError(f"{name} must fit in float32, got {value!r}")
    if not 0 <= threshold <= upper:
        raise ValueError(f"need 0 <= threshold <= upper, got threshold={threshold!r}, upper={upper!r}")
    if not 0 <= semi_hard_prob <= 1:
        raise ValueError(f"semi_hard_prob must be in [0, 1], got {semi_hard_prob!r}")


class TripletMiner:
    """Scores pairs of samples by their meta-entities and mines one triplet per anchor.

    Score of anchor a against candidate b (asymmetric)::

        S(a, b) = w_dis * J(L_a, L_b)
                + (w_adj * sum_{d in D_a & D_b} IoU(adj_a[d], adj_b[d])
                 + w_dir * sum_{d in D_a & D_b} IoU(dir_a[d], dir_b[d])) / |D_a|

    J is the Jaccard index of the disease labels including the implied "no finding" class; an IoU
    of two empty sets is 1. Scores are float32.

    Mining, per anchor over its candidate pool (every candidate whose id differs from the anchor's):

    - positive: the highest score;
    - kept: the other candidates with score < ``upper``;
    - negative, with probability ``semi_hard_prob`` (semi-hard): the lowest kept score that is
      >= ``threshold``, else the highest kept score; otherwise (hard): the lowest kept score.

    Ties (exactly equal float32 scores), by ``tie_break``:

    - ``"random"`` (default): each anchor breaks them at random, with a key from a counter-based
      hash of (seed, anchor id, candidate id); the smallest key wins. The hash puts every id on a
      random circle and the key is the clockwise distance from the anchor to the candidate, so an
      anchor takes the next tied candidate after itself: across seeds every tied candidate is
      equally likely, and anchors that tie with each other take different samples. This is what
      the published code does in effect (each triplet is mined in a fresh random pool) and spreads
      the tied choices of a batch over many samples instead of one. The key depends on nothing
      else, so CPU, CUDA and :mod:`medtrim_ext.ops.reference` agree bit for bit whatever the thread
      count or tiling, and a permuted batch (ids permuted with it) picks the same samples.
    - ``"first"``: the lowest candidate index wins (the rule before random ties).

    Scores are compared with ``threshold`` and ``upper`` in float32. An anchor with an empty pool
    gets positive = negative = -1; with nothing kept, negative = -1. With ``min_positive_score``
    > 0, an anchor whose best candidate scores less gets no triplet (-1, -1): e.g. an abnormal
    study with no other study sharing a finding, whose "positive" would be an arbitrary sample.

    The random choices are drawn on the CPU from ``generator`` (or torch's default generator), see
    :meth:`draw`: first the semi-hard/hard choice per anchor (only when 0 < ``semi_hard_prob`` < 1),
    then the seed of the tie keys (only with random ties). So CPU and CUDA give identical triplets
    for the same generator state.

    The fused kernels never build the (N, M) score matrix: memory is O(N + M).
    """

    def __init__(self, w_dis: float = MINER_DEFAULTS.w_dis, w_adj: float = MINER_DEFAULTS.w_adj,
                 w_dir: float = MINER_DEFAULTS.w_dir, threshold: float = MINER_DEFAULTS.threshold,
                 upper: float = MINER_DEFAULTS.upper, semi_hard_prob: float = MINER_DEFAULTS.semi_hard_prob,
                 tie_break: str = MINER_DEFAULTS.tie_break,
                 min_positive_score: float = MINER_DEFAULTS.min_positive_score):
        _check_fraction_args(w_dis, w_adj, w_dir, threshold, upper, semi_hard_prob, min_positive_score)
        if tie_break not in TIE_BREAKS:
            raise ValueError(f"tie_break must be one of {TIE_BREAKS}, got {tie_break!r}")
        self.w_dis, self.w_adj, self.w_dir = float(w_dis), float(w_adj), float(w_dir)
        self.threshold, self.upper = float(threshold), float(upper)
        self.semi_hard_prob = float(semi_hard_prob)
        self.tie_break = tie_break
        self.min_positive_score = float(min_positive_score)

    def __repr__(self) -> str:
        return (f"TripletMiner(w_dis={self.w_dis}, w_adj={self.w_adj}, w_dir={self.w_dir}, "
                f"threshold={self.threshold}, upper={self.upper}, semi_hard_prob={self.semi_hard_prob}, "
                f"tie_break={self.tie_break!r}, min_positive_score={self.min_positive_score})")

    @property
    def weights(self) -> dict:
        return {"w_dis": self.w_dis, "w_adj": self.w_adj, "w_dir": self.w_dir}

    def score_matrix(self, anchors: MetaEntities, candidates: MetaEntities | None = None) -> torch.Tensor:
        """(N, M) float32 scores of every anchor against every candidate (M = N without candidates)."""
        candidates = self._check_sets(anchors, candidates)
        return ops.score_matrix(anchors, candidates, self.w_dis, self.w_adj, self.w_dir)

    def pair_scores(self, anchors: MetaEntities, candidates: MetaEntities | None,
                    anchor_index: torch.Tensor, candidate_index: torch.Tensor) -> torch.Tensor:
        """float32 scores of the listed pairs (``anchor_index[k]``, ``candidate_index[k]``); NaN
        where an index is -1. Without building the score matrix."""
        cands = self._check_sets(anchors, candidates)
        n = anchor_index.shape[0] if isinstance(anchor_index, torch.Tensor) else -1
        anchor_index = check_ids("anchor_index", anchor_index, n, anchors.device)
        candidate_index = check_ids("candidate_index", candidate_index, n, anchors.device)
        return ops.pair_scores(anchors, cands, anchor_index, candidate_index, self.w_dis,
                               self.w_adj, self.w_dir)

    def triplet_scores(self, anchors: MetaEntities, triplets: "Triplets",
                       candidates: MetaEntities | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores of (anchor, positive) and (anchor, negative) for each triplet row; NaN where the
        positive or negative is -1."""
        return (self.pair_scores(anchors, candidates, triplets.anchor, triplets.positive),
                self.pair_scores(anchors, candidates, triplets.anchor, triplets.negative))

    def semi_hard_mask(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Bool (n,) on the CPU: which anchors use the semi-hard rule (the rest use the hard rule)."""
        if self.semi_hard_prob >= 1.0:
            return torch.ones(n, dtype=torch.bool)
        if self.semi_hard_prob <= 0.0:
            return torch.zeros(n, dtype=torch.bool)
        check_generator(generator)
        return torch.rand(n, generator=generator) < self.semi_hard_prob

    def draw(self, n: int, generator: torch.Generator | None = None) -> MiningDraw:
        """The random choices of mining ``n`` anchors, in the order :meth:`__call__` draws them:
        the semi-hard mask, then the tie seed (a 63-bit int in a one-element int64 tensor, ``None``
        with ``tie_break="first"``).
        Pass them to :func:`medtrim_ext.ops.reference.mine_triplets` to reproduce a call."""
        check_generator(generator)
        semi_hard = self.semi_hard_mask(n, generator)
        tie_seed = None
        if self.tie_break == "random":
            tie_seed = torch.randint(0, 2**63 - 1, (1,), generator=generator)
        return MiningDraw(semi_hard, tie_seed)

    #: CPU calls with at least this many (anchor, candidate) pairs go through the folded kernel
    #: (the same triplets): measured on the 2-core VM, folding pays from about 2,000 x 2,000 on
    #: (2.4x at 4,096 samples, 7x at 16k, 25x at 64k on the IU mix; see docs/semantics.md).
    FOLD_MIN_PAIRS = 2048 * 2048

    def __call__(self, anchors: MetaEntities, candidates: MetaEntities | None = None, *,
                 anchor_ids: torch.Tensor | None = None, candidate_ids: torch.Tensor | None = None,
                 generator: torch.Generator | None = None, draw: MiningDraw | None = None,
                 fold: bool | None = None) -> Triplets:
        """Mine one triplet per anchor with the fused kernel.

        Without ``candidates`` the anchors mine among themselves, excluding themselves. With
        ``candidates`` (a memory bank, an all-gathered batch), pass ``anchor_ids`` and
        ``candidate_ids`` so that equal ids (the same study) never pair; without ids nothing is
        excluded. Indices in the result refer to the candidate set. Random ties are keyed by the
        ids (default: positions), so give samples stable ids (dataset indices) to make a sample's
        choices independent of where it sits in the batch.

        The random choices come from ``generator`` (see :meth:`draw`), or from ``draw``, a
        :class:`MiningDraw` made earlier (e.g. ``miner.draw(n_total, g).rows(chunk)`` to mine
        a large set in chunks exactly as in one call).

        ``fold``: mine over the distinct records (:meth:`mine_collection`, the same triplets);
        ``None`` (default) folds CPU calls of at least :attr:`FOLD_MIN_PAIRS` pairs, where it is
        faster; CUDA calls stay on the fused GPU kernel unless ``fold=True``.
        """
        cands, anchor_ids, candidate_ids, draw = self._prepare(anchors, candidates, anchor_ids,
                                                               candidate_ids, generator, draw)
        n, device = len(anchors), anchors.device
        semi_hard, tie_seed = draw
        if fold is None:
            fold = device.type == "cpu" and n * len(cands) >= self.FOLD_MIN_PAIRS
        if fold:
            pos, neg, _, _ = folded(self, anchors, candidates, anchor_ids, candidate_ids, semi_hard,
                                    tie_seed, 1, True, self.min_positive_score)
            return Triplets(torch.arange(n, device=device), pos[:, 0], neg[:, 0])
        pos, neg = ops.mine_triplets(anchors, cands, anchor_ids, candidate_ids, semi_hard.to(device),
                                     self.w_dis, self.w_adj, self.w_dir, self.threshold, self.upper,
                                     tie_seed)
        anchor = torch.arange(n, device=device)
        if self.min_positive_score > 0:
            score = ops.pair_scores(anchors, cands, anchor, pos, self.w_dis, self.w_adj, self.w_dir)
            # NaN (no positive) compares False: such rows stay -1
            weak = ~(score >= torch.tensor(self.min_positive_score, dtype=torch.float32))
            pos = torch.where(weak, -1, pos)
            neg = torch.where(weak, -1, neg)
        return Triplets(anchor, pos, neg)

    def mine_collection(self, anchors: MetaEntities, candidates: MetaEntities | None = None, *,
                        anchor_ids: torch.Tensor | None = None, candidate_ids: torch.Tensor | None = None,
                        per_anchor: int = 1, generator: torch.Generator | None = None,
                        draw: MiningDraw | None = None) -> CollectionTriplets:
        """``per_anchor`` triplets for every anchor of a whole collection, folded over its distinct
        records (:mod:`medtrim_ext.mining.collection`): with ``per_anchor=1`` the triplets of
        :meth:`__call__` with the same arguments, exactly, at a cost that grows with the number of
        distinct records rather than with N². Arguments as in :meth:`__call__`; the random
        choices are those of :meth:`draw` (the tie seed keys every choice, so the result does not
        depend on the order or chunking of the anchors)."""
        check_int("per_anchor", per_anchor, minimum=1)
        cands, anchor_ids, candidate_ids, draw = self._prepare(anchors, candidates, anchor_ids,
                                                               candidate_ids, generator, draw)
        return CollectionTriplets(*folded(self, anchors, candidates, anchor_ids, candidate_ids,
                                          draw.semi_hard, draw.tie_seed, per_anchor, True,
                                          self.min_positive_score))

    def neighbors(self, anchors: MetaEntities, candidates: MetaEntities | None = None, *, k: int = 10,
                  anchor_ids: torch.Tensor | None = None, candidate_ids: torch.Tensor | None = None,
                  generator: torch.Generator | None = None, draw: MiningDraw | None = None) -> Neighbors:
        """Each anchor's ``k`` candidates with the highest meta-entity scores, best first, folded
        over the distinct records: equal scores in the order of the miner's tie rule (random: by
        the seed of :meth:`draw`; ``"first"``: lowest index), a candidate with the anchor's id
        never listed. Memory ``O(N·k + U)``. Equals
        :func:`medtrim_ext.ops.reference.top_k_from_scores` exactly."""
        check_int("k", k, minimum=1)
        cands, anchor_ids, candidate_ids, draw = self._prepare(anchors, candidates, anchor_ids,
                                                               candidate_ids, generator, draw)
        index, _, score, _ = folded(self, anchors, candidates, anchor_ids, candidate_ids,
                                    draw.semi_hard, draw.tie_seed, k, False, 0.0)
        return Neighbors(index, score)

    def _prepare(self, anchors, candidates, anchor_ids, candidate_ids, generator, draw):
        """The checked (candidates, anchor ids, candidate ids, draw) of a mining call."""
        if candidates is None:
            if candidate_ids is not None:
                raise ValueError("candidate_ids needs candidates")
        elif (anchor_ids is None) != (candidate_ids is None):
            raise ValueError("pass both anchor_ids and candidate_ids, or neither")
        cands = self._check_sets(anchors, candidates)
        n, m, device = len(anchors), len(cands), anchors.device
        if anchor_ids is None:
            anchor_ids, candidate_ids = default_ids(n, m, candidates is None, device)
        else:
            anchor_ids = check_ids("anchor_ids", anchor_ids, n, device)
            candidate_ids = (anchor_ids if candidates is None
                             else check_ids("candidate_ids", candidate_ids, m, device))
        if draw is None:
            draw = self.draw(n, generator)
        elif not isinstance(draw, MiningDraw):
            raise TypeError(f"draw must be a MiningDraw (from TripletMiner.draw), got {type(draw).__name__}")
        elif tuple(draw.semi_hard.shape) != (n,) or draw.semi_hard.dtype != torch.bool:
            raise ValueError(f"draw.semi_hard must be a bool tensor of shape ({n},), got "
                             f"{draw.semi_hard.dtype} {tuple(draw.semi_hard.shape)}")
        elif (draw.tie_seed is None) != (self.tie_break == "first"):
            raise ValueError(f"draw has tie_seed={draw.tie_seed!r} but this miner breaks ties "
                             f"{self.tie_break!r}")
        return cands, anchor_ids, candidate_ids, draw

    @staticmethod
    def _check_sets(anchors, candidates):
        if not isinstance(anchors, MetaEntities):
            raise TypeError(f"anchors must be MetaEntities, got {type(anchors).__name__}")
        if candidates is None:
            return anchors
        if not isinstance(candidates, MetaEntities):
            raise TypeError(f"candidates must be MetaEntities, got {type(candidates).__name__}")
        if candidates.vocabulary != anchors.vocabulary:
            raise ValueError("candidates use a different vocabulary than anchors "
                             f"({candidates.vocabulary.name!r} vs {anchors.vocabulary.name!r})")
        if candidates.device != anchors.device:
            raise ValueError(f"candidates are on {candidates.device} but anchors on {anchors.device}")
        return candidates
