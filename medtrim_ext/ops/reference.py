"""Pure-PyTorch reference implementations: the oracle for tests and the baseline for benchmarks.

They follow the published MedTrim semantics from boolean masks with matrix products (no bit
tricks). Counts come from float32 matrix products (exact for integers), the arithmetic runs in
float64 in the kernels' order and is rounded to float32 once, so scores agree bit for bit with the
kernels and mined indices agree exactly. They materialize (N, M) tensors: use them on sizes that fit
in memory.
"""

from __future__ import annotations

import torch

from ..entities.meta_entities import MetaEntities
from ..entities.triplets import Triplets, default_ids


def _counts(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Intersection and union sizes (float64) of every row-set of x (N, K) with every one of y (M, K)."""
    inter = (x @ y.T).double()  # float32 products of 0/1 sums are exact integers
    union = x.sum(1).double()[:, None] + y.sum(1).double()[None, :] - inter
    return inter, union


def _iou(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """IoU of every row-set of x (N, K) with every row-set of y (M, K); 1 where both are empty."""
    inter, union = _counts(x, y)
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))


def score_matrix(anchors: MetaEntities, candidates: MetaEntities | None = None, *,
                 w_dis: float = 0.85, w_adj: float = 0.10, w_dir: float = 0.05) -> torch.Tensor:
    """(N, M) float32 scores: S[a, b] = w_dis * J + (w_adj * sum IoU_adj + w_dir * sum IoU_dir) / |D_a|.

    Arithmetic in float64, in the kernels' order (``* (1 / |D_a|)``), rounded to float32 once."""
    candidates = anchors if candidates is None else candidates
    da, aa, ra = (m.float() for m in anchors.masks())
    db, ab, rb = (m.float() for m in candidates.masks())
    f64 = dict(dtype=torch.float64, device=da.device)
    wd, wa, wr = (torch.tensor(w, **f64) for w in (w_dis, w_adj, w_dir))

    n_a, n_b = da.sum(1).double(), db.sum(1).double()
    inter, union = _counts(da, db)
    jaccard = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))

    adj_sum = torch.zeros_like(inter)
    dir_sum = torch.zeros_like(inter)
    for d in range(da.shape[1]):  # ascending disease order, like the kernels
        # only pairs that share disease d get descriptor terms: work on that block alone
        rows = da[:, d].nonzero().flatten()
        cols = db[:, d].nonzero().flatten()
        if len(rows) == 0 or len(cols) == 0:
            continue
        block = (rows[:, None], cols[None, :])
        adj_sum[block] = adj_sum[block] + _iou(aa[rows, d], ab[cols, d])
        dir_sum[block] = dir_sum[block] + _iou(ra[rows, d], rb[cols, d])

    inv_n_a = 1.0 / n_a.clamp_min(1)  # multiplied, not divided, exactly like the kernels
    scores = wd * jaccard + (wa * adj_sum + wr * dir_sum) * inv_n_a[:, None]
    # an anchor with no finding matches only other no-finding samples, with no descriptor terms
    empty_pair = (n_a[:, None] == 0) & (n_b[None, :] == 0)
    no_finding_row = torch.where(empty_pair, wd, torch.zeros((), **f64))
    return torch.where(n_a[:, None] == 0, no_finding_row, scores).float()


_MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """The kernels' 32-bit mixer (lowbias32) on int64 tensors holding values in [0, 2^32).

    Every product stays inside int64: the second constant is used as its negative equivalent
    mod 2^32, so the low 32 bits are exact without overflow."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _MASK32
    x = x ^ (x >> 15)
    x = (x * (0x846CA68B - (1 << 32))) & _MASK32
    return x ^ (x >> 16)


def sample_tie_hashes(tie_seed: int | torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """int64 hashes in [0, 2^32) of sample ids for a seed: each sample's place on the random
    circle whose clockwise distances are the tie keys (see :func:`tie_keys`)."""
    seed = int(tie_seed) & ((1 << 64) - 1)
    v = ids.to(torch.int64)
    lo, hi = v & _MASK32, (v >> 32) & _MASK32  # the two's-complement words of an int64
    h = _mix32(_mix32(lo ^ 0x9E3779B9) ^ hi)
    return _mix32(_mix32(h ^ (seed & _MASK32)) ^ (seed >> 32))


def tie_keys(tie_seed: int | torch.Tensor, anchor_ids: torch.Tensor, candidate_ids: torch.Tensor) -> torch.Tensor:
    """(N, M) int64 tie keys in [0, 2^32) of every (anchor id, candidate id) pair for ``tie_seed``,
    exactly as the kernels compute them: the clockwise distance, minus one, from the anchor's
    hash to the candidate's on a circle of 2^32 places (a counter-based hash, no random stream).
    Among equal scores the smallest key wins, so each anchor takes the next tied candidate after
    itself: uniform over the tied candidates across seeds, and a permutation among anchors that
    tie with each other."""
    a = sample_tie_hashes(tie_seed, anchor_ids)
    c = sample_tie_hashes(tie_seed, candidate_ids)
    return (c[None, :] - a[:, None] - 1) & _MASK32


def mine_from_scores(scores: torch.Tensor, anchor_ids: torch.Tensor, candidate_ids: torch.Tensor,
                     semi_hard: torch.Tensor, *, threshold: float = 0.25, upper: float = 0.6,
                     tie_seed: int | torch.Tensor | None = None,
                     min_positive_score: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) per anchor row of a score matrix; -1 where there is none.

    Candidate b is in anchor a's pool when ``anchor_ids[a] != candidate_ids[b]``. Equal scores go
    to the smallest :func:`tie_keys` entry when ``tie_seed`` is given (else every tie key is 0),
    then to the lowest candidate index (``argmax``/``argmin`` return the first occurrence). A
    positive scoring below ``min_positive_score`` leaves the anchor without a triplet.
    """
    n, m = scores.shape
    device = scores.device
    none = torch.full((n,), -1, dtype=torch.int64, device=device)
    if m == 0 or n == 0:
        return none, none.clone()
    f32 = dict(dtype=torch.float32, device=device)
    thr, up = torch.tensor(threshold, **f32), torch.tensor(upper, **f32)

    # One int64 key per pair orders by score, then tie key: scores are >= 0, so their float32
    # bits (< 2^31) order like the values and fit above a 32-bit tie key.
    bits = (scores.float() + 0.0).view(torch.int32).to(torch.int64) << 32
    tie = (tie_keys(tie_seed, anchor_ids, candidate_ids) if tie_seed is not None
           else torch.zeros((n, m), dtype=torch.int64, device=device))
    larger_first = bits | (_MASK32 - tie)   # argmax: larger score, then smaller tie key
    smaller_first = bits | tie              # argmin: smaller score, then smaller tie key
    lowest = torch.iinfo(torch.int64).min
    highest = torch.iinfo(torch.int64).max

    def best(keys, mask, largest):
        fill = torch.full_like(keys, lowest if largest else highest)
        masked = torch.where(mask, keys, fill)
        return masked.argmax(1) if largest else masked.argmin(1)

    pool = anchor_ids[:, None] != candidate_ids[None, :]
    positive = torch.where(pool.any(1), best(larger_first, pool, True), none)

    columns = torch.arange(m, device=device)
    kept = pool & (scores < up) & (columns[None, :] != positive[:, None])
    semi = kept & (scores >= thr)
    semi_idx = best(smaller_first, semi, False)
    fallback_idx = best(larger_first, kept, True)
    hard_idx = best(smaller_first, kept, False)
    negative = torch.where(semi_hard, torch.where(semi.any(1), semi_idx, fallback_idx), hard_idx)
    negative = torch.where(kept.any(1), negative, none)
    if min_positive_score > 0:
        rows = torch.arange(n, device=device)
        weak = scores[rows, positive.clamp_min(0)] < torch.tensor(min_positive_score, **f32)
        positive = torch.where(weak, none, positive)
        negative = torch.where(weak, none, negative)
    return positive, negative


def _rank_keys(scores, anchor_ids, candidate_ids, tie_seed):
    """(larger_first, smaller_first) int64 keys of :func:`mine_from_scores`: score bits above the
    tie key, so one comparison orders by score, then tie key (then index, by a stable sort)."""
    n, m = scores.shape
    bits = (scores.float() + 0.0).view(torch.int32).to(torch.int64) << 32
    tie = (tie_keys(tie_seed, anchor_ids, candidate_ids) if tie_seed is not None
           else torch.zeros((n, m), dtype=torch.int64, device=scores.device))
    return bits | (_MASK32 - tie), bits | tie


def _first_k(order_key: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the columns of the ``k`` smallest keys among ``mask`` (ties: lower column first)
    and whether each slot holds one."""
    n, m = order_key.shape
    highest = torch.iinfo(torch.int64).max
    keyed = torch.where(mask, order_key, torch.full_like(order_key, highest))
    order = torch.sort(keyed, dim=1, stable=True).indices[:, :k]
    taken = mask.gather(1, order)
    if order.shape[1] < k:   # fewer candidates than slots
        pad = k - order.shape[1]
        order = torch.cat([order, order.new_zeros((n, pad))], 1)
        taken = torch.cat([taken, taken.new_zeros((n, pad))], 1)
    return order, taken


def top_k_from_scores(scores: torch.Tensor, anchor_ids: torch.Tensor, candidate_ids: torch.Tensor,
                      k: int, *, tie_seed: int | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index, score)``, int64 and float32 ``(N, k)``: each anchor's ``k`` candidates with the
    highest scores, best first, among those whose id differs from the anchor's; equal scores in
    the order of :func:`tie_keys` (then lower index), exactly as the miner picks its positive.
    Slots without a candidate hold -1 and NaN."""
    n, m = scores.shape
    larger_first, _ = _rank_keys(scores, anchor_ids, candidate_ids, tie_seed)
    pool = anchor_ids[:, None] != candidate_ids[None, :]
    order, taken = _first_k(torch.iinfo(torch.int64).max - larger_first, pool, k) if m else (
        torch.zeros((n, k), dtype=torch.int64, device=scores.device),
        torch.zeros((n, k), dtype=torch.bool, device=scores.device))
    index = torch.where(taken, order, torch.full_like(order, -1))
    got = scores.gather(1, order.clamp_max(max(m - 1, 0))) if m else torch.zeros((n, k), device=scores.device)
    return index, torch.where(taken, got, torch.full_like(got, float("nan")))


def mine_k_from_scores(scores: torch.Tensor, anchor_ids: torch.Tensor, candidate_ids: torch.Tensor,
                       semi_hard: torch.Tensor, k: int, *, threshold: float = 0.25, upper: float = 0.6,
                       tie_seed: int | torch.Tensor | None = None,
                       min_positive_score: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` triplets per anchor: ``(positive, negative)``, int64 ``(N, k)``, -1 where none.

    The positives are the anchor's ``k`` best candidates (:func:`top_k_from_scores`), less those
    scoring below ``min_positive_score`` (with ``k = 1``: the miner's positive). The negatives
    continue the miner's rule past its first choice, among the candidates that are not one of
    the positives and score below ``upper``: semi-hard anchors take them from the lowest score
    >= ``threshold`` upwards, then from the highest score below ``threshold`` downwards; hard
    anchors from the lowest score upwards; equal scores in tie-key order. Negative ``i`` pairs
    with positive ``i``; there are at most as many negatives as positives. With ``k = 1`` this
    is :func:`mine_from_scores` exactly.
    """
    n, m = scores.shape
    device = scores.device
    pos, pos_score = top_k_from_scores(scores, anchor_ids, candidate_ids, k, tie_seed=tie_seed)
    if min_positive_score > 0:
        weak = ~(pos_score >= torch.tensor(min_positive_score, dtype=torch.float32, device=device))
        pos = torch.where(weak, torch.full_like(pos, -1), pos)
    neg = torch.full((n, k), -1, dtype=torch.int64, device=device)
    if m == 0:
        return pos, neg
    larger_first, smaller_first = _rank_keys(scores, anchor_ids, candidate_ids, tie_seed)
    f32 = dict(dtype=torch.float32, device=device)
    thr, up = torch.tensor(threshold, **f32), torch.tensor(upper, **f32)
    is_pos = torch.zeros((n, m), dtype=torch.bool, device=device)
    got = pos >= 0   # (not a scatter of pos >= 0: an empty slot's clamped 0 would unmark column 0)
    is_pos[torch.arange(n, device=device)[:, None].expand(n, k)[got], pos[got]] = True
    kept = (anchor_ids[:, None] != candidate_ids[None, :]) & (scores < up) & ~is_pos
    highest = torch.iinfo(torch.int64).max
    # one ascending key per rule: semi-hard puts [threshold, upper) first, lowest first (keys
    # shifted below 0), then the rest highest first (keys mirrored); hard is lowest first
    above = scores >= thr
    semi_key = torch.where(above, smaller_first - highest - 1, highest - larger_first)
    key = torch.where(semi_hard[:, None], semi_key, smaller_first)
    order, taken = _first_k(key, kept, k)
    chosen = torch.where(taken, order, torch.full_like(order, -1))
    # negative i goes with positive i: slots past the positives stay empty
    slots = (pos >= 0).sum(1, keepdim=True)
    within = torch.arange(k, device=device)[None, :] < slots
    return pos, torch.where(within, chosen, neg)


def mine_triplets(anchors: MetaEntities, candidates: MetaEntities | None = None, *,
                  anchor_ids: torch.Tensor | None = None, candidate_ids: torch.Tensor | None = None,
                  semi_hard: torch.Tensor | None = None, w_dis: float = 0.85, w_adj: float = 0.10,
                  w_dir: float = 0.05, threshold: float = 0.25, upper: float = 0.6,
                  tie_seed: int | torch.Tensor | None = None, min_positive_score: float = 0.0) -> Triplets:
    """Reference of the fused mining: score matrix, then :func:`mine_from_scores`.

    Defaults: self-mining with ``ids = arange(N)`` when ``candidates`` is None, no exclusion for
    an external candidate set, the semi-hard rule for every anchor, and lowest-index ties
    (``tie_seed=None``; :meth:`TripletMiner.draw` gives the seed a miner would use).
    """
    n = len(anchors)
    device = anchors.device
    if candidates is None:
        candidates = anchors
        anchor_ids = default_ids(n, n, True, device)[0] if anchor_ids is None else anchor_ids
        candidate_ids = anchor_ids if candidate_ids is None else candidate_ids
    elif anchor_ids is None or candidate_ids is None:
        anchor_ids, candidate_ids = default_ids(n, len(candidates), False, device)
    if semi_hard is None:
        semi_hard = torch.ones(n, dtype=torch.bool, device=device)
    scores = score_matrix(anchors, candidates, w_dis=w_dis, w_adj=w_adj, w_dir=w_dir)
    pos, neg = mine_from_scores(scores, anchor_ids, candidate_ids, semi_hard,
                                threshold=threshold, upper=upper, tie_seed=tie_seed,
                                min_positive_score=min_positive_score)
    return Triplets(torch.arange(n, device=device), pos, neg)


NORM_EPS = 1e-8  # rows with a norm at or below this count as zero vectors (as in the kernels)


def normalize_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit length in float32 (float64 stays float64); rows with norm <= 1e-8 become
    zero: their cosine with anything is 0 and they receive no gradient."""
    x = x.double() if x.dtype == torch.float64 else x.float()
    norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
    inv = (norm > NORM_EPS) / norm.clamp_min(NORM_EPS)  # no 1/0: the where-NaN trap is avoided
    return x * inv


def multimodal_triplet_loss(img: torch.Tensor, txt: torch.Tensor, anchor: torch.Tensor,
                            positive: torch.Tensor, negative: torch.Tensor, margin: float = 0.3, *,
                            cand_img: torch.Tensor | None = None,
                            cand_txt: torch.Tensor | None = None,
                            reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of :class:`medtrim_ext.MultimodalTripletLoss`, with gathered copies and autograd.

    With d = 1 - cos, per triplet (a, p, n)::

        L_img = ([d(a_i,p_i) - d(a_i,n_i) + m]_+ + [d(a_i,p_t) - d(a_i,n_t) + m]_+) / 2
        L_txt = ([d(a_t,p_t) - d(a_t,n_t) + m]_+ + [d(a_t,p_i) - d(a_t,n_i) + m]_+) / 2

    Anchors index ``img``/``txt``; positives and negatives index ``cand_img``/``cand_txt`` (default:
    ``img``/``txt``). A triplet with any index -1 is skipped. ``reduction``: "mean" over the valid
    triplets (0 when there is none), "sum", or "none" (per triplet, 0 for skipped ones).
    """
    cand_img = img if cand_img is None else cand_img
    cand_txt = txt if cand_txt is None else cand_txt
    ni, nt, ci, ct = (normalize_rows(x) for x in (img, txt, cand_img, cand_txt))
    valid = (anchor >= 0) & (positive >= 0) & (negative >= 0)
    a, p, n = (torch.where(valid, idx, torch.zeros_like(idx)) for idx in (anchor, positive, negative))
    ai, at, pi, pt, n_i, n_t = ni[a], nt[a], ci[p], ct[p], ci[n], ct[n]

    def hinge(x, pos, neg):
        d_pos = 1 - (x * pos).sum(1)
        d_neg = 1 - (x * neg).sum(1)
        return torch.relu(d_pos - d_neg + margin)

    loss_img = (hinge(ai, pi, n_i) + hinge(ai, pt, n_t)) / 2
    loss_txt = (hinge(at, pt, n_t) + hinge(at, pi, n_i)) / 2
    loss_img = torch.where(valid, loss_img, torch.zeros_like(loss_img))
    loss_txt = torch.where(valid, loss_txt, torch.zeros_like(loss_txt))
    if reduction == "none":
        return loss_img, loss_txt
    if reduction == "sum":
        return loss_img.sum(), loss_txt.sum()
    if reduction == "mean":
        count = valid.sum().clamp_min(1)
        return loss_img.sum() / count, loss_txt.sum() / count
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
