"""Cross-modal retrieval metrics: Precision@K, Recall@K (hit rate), own-pair recall and mAP.

Similarity is the cosine of the embeddings. Rankings break ties deterministically: of two
gallery items with equal similarity the one with the lower gallery index ranks first. Queries
are processed in chunks, so memory is ``O(rows per chunk x gallery size)``, never the full
query x gallery matrix.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from tqdm.auto import tqdm

from ..utils.checks import check_ids, check_int, check_tensor

__all__ = ["evaluate_retrieval", "retrieval_metrics"]

# at most this many similarities per chunk: with the sort, the relevance mask and the cumulative
# counts a chunk holds about 30 bytes per similarity, so about 120 MB
MAX_CHUNK_ELEMENTS = 1 << 22


def _check_embeddings(name: str, x) -> torch.Tensor:
    """``x`` after checking it is a finite 2-D floating-point tensor with rows and columns."""
    check_tensor(name, x, floating=True, dim=2)
    if x.shape[0] == 0:
        raise ValueError(f"{name} has no rows")
    if x.shape[1] == 0:
        raise ValueError(f"{name} has zero-width rows")
    if not bool(torch.isfinite(x).all()):
        bad = "NaN" if bool(torch.isnan(x).any()) else "infinite"
        raise ValueError(f"{name} contains {bad} values")
    return x


def _check_ks(ks) -> list[int]:
    """The distinct cut-offs in ``ks`` (an int or a sequence of positive ints), sorted."""
    if isinstance(ks, int):
        ks = (ks,)
    try:
        ks = list(ks)
    except TypeError:
        raise TypeError(f"ks must be a sequence of positive ints, got {ks!r}") from None
    if not ks:
        raise ValueError("ks must not be empty")
    return sorted({check_int("every K in ks", k) for k in ks})


def _inverse_norms(x: torch.Tensor) -> torch.Tensor:
    norm = x.norm(dim=1)
    # a zero row has similarity 0 with everything
    return torch.where(norm > 0, 1.0 / norm.clamp_min(torch.finfo(norm.dtype).tiny), torch.zeros_like(norm))


def _top_indices(sims: torch.Tensor, k: int) -> torch.Tensor:
    """Gallery indices of the ``k`` most similar items per row, best first, ties by lower index.

    ``torch.topk`` leaves ties in any order, so the boundary value ``t`` (the k-th largest) is
    found with it and the selection rebuilt exactly: everything above ``t``, then the items equal
    to ``t`` with the lowest indices until k are taken.
    """
    rows, m = sims.shape
    t = sims.topk(k, dim=1).values[:, -1:]                      # (rows, 1)
    above = sims > t
    need = k - above.sum(1, keepdim=True)                       # >= 1
    equal = sims == t
    chosen = above | (equal & (equal.cumsum(1) <= need))        # exactly k per row
    idx = chosen.nonzero()[:, 1].view(rows, k)                  # increasing index within a row
    order = sims.gather(1, idx).sort(dim=1, descending=True, stable=True).indices
    return idx.gather(1, order)


def _full_ranking(sims: torch.Tensor) -> torch.Tensor:
    """All gallery indices per row, best first; a stable sort keeps lower indices first on ties."""
    return sims.sort(dim=1, descending=True, stable=True).indices


def retrieval_metrics(query: torch.Tensor, gallery: torch.Tensor, query_keys: torch.Tensor,
                      gallery_keys: torch.Tensor, ks: Sequence[int] = (1, 5, 10),
                      pair_index: torch.Tensor | None = None, chunk_size: int = 2048, *,
                      compute_map: bool = True, progress: bool = False) -> dict:
    """Retrieve the gallery for every query by cosine similarity and score the rankings.

    Args:
        query: ``(N, D)`` float embeddings; gallery: ``(M, D)``. Rows need not be normalised; an
            all-zero row has similarity 0 with everything. NaN or infinite values raise
            ``ValueError`` naming the argument.
        query_keys, gallery_keys: integer ``(N,)`` / ``(M,)`` relevance keys (see
            :mod:`.keys`): gallery item j is relevant to query i when ``gallery_keys[j] ==
            query_keys[i]``. Both must come from one key computation.
        ks: cut-offs K. A K larger than the gallery is clamped to M: the metrics named ``@K``
            are then those at M, and ``clamped_ks`` in the result lists such K.
        pair_index: optional integer ``(N,)``: the gallery position of each query's own pair.
        chunk_size: queries per chunk (fewer when ``chunk_size * M`` exceeds about 4M
            similarities, to bound memory).
        compute_map: also compute ``mAP``; this sorts every query's full ranking
            (``O(N M log M)`` time), otherwise only the top ``max(ks)`` are selected.
        progress: show a tqdm bar over chunks.

    Returns a dict of Python numbers (plus the list ``clamped_ks``), with ``k = min(K, M)``
    and ``rel_i(j)`` = 1 when the item at rank j of query i's ranking is relevant:

    - ``precision@K``: mean over all N queries of ``sum_{j<=k} rel_i(j) / k``, the share of
      relevant items among the top k.
    - ``recall@K``: share of the N queries with at least one relevant item among the top k
      (the "Recall@K" of MedTrim and most image-report retrieval papers; also called hit rate,
      it is *not* the share of all relevant items that were retrieved).
    - ``pair_recall@K`` (only with ``pair_index``): share of queries whose own pair is among
      the top k.
    - ``mAP`` (only with ``compute_map``): mean over the queries that have at least one
      relevant gallery item of their average precision over the full ranking,
      ``AP_i = (1 / R_i) sum_j rel_i(j) * precision_i@j`` with ``R_i`` their relevant items.
      NaN when no query has a relevant item.
    - ``num_queries`` (N), ``gallery_size`` (M), ``queries_without_relevant``: queries with
      no relevant gallery item at all (they count as 0 in precision@K and recall@K).
    """
    query = _check_embeddings("query", query)
    gallery = _check_embeddings("gallery", gallery)
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(f"query has dim {query.shape[1]} but gallery has dim {gallery.shape[1]}")
    if query.device != gallery.device:
        raise ValueError(f"query is on {query.device} but gallery on {gallery.device}")
    n, m = query.shape[0], gallery.shape[0]
    device = query.device
    qk = check_ids("query_keys", query_keys, n, None).to(device)
    gk = check_ids("gallery_keys", gallery_keys, m, None).to(device)
    ks = _check_ks(ks)
    if pair_index is not None:
        pair_index = check_ids("pair_index", pair_index, n, None).to(device)
        if n and (int(pair_index.min()) < 0 or int(pair_index.max()) >= m):
            raise ValueError(f"pair_index must lie in [0, {m}) (gallery positions)")
    check_int("chunk_size", chunk_size)

    eff = {k: min(k, m) for k in ks}
    kmax = max(eff.values())
    dtype = torch.promote_types(torch.promote_types(query.dtype, gallery.dtype), torch.float32)
    q, g = query.to(dtype), gallery.to(dtype)
    q_inv, g_inv = _inverse_norms(q), _inverse_norms(g)
    g_t = g.t()

    hits = {k: torch.zeros((), dtype=torch.float64, device=device) for k in ks}   # sum of shares
    found = {k: torch.zeros((), dtype=torch.int64, device=device) for k in ks}
    pair_found = {k: torch.zeros((), dtype=torch.int64, device=device) for k in ks}
    ap_sum = torch.zeros((), dtype=torch.float64, device=device)
    # relevant gallery items per query, from the key histogram (no N x M matrix)
    uniq, g_counts = torch.unique(gk, return_counts=True)
    pos = torch.searchsorted(uniq, qk).clamp_max(uniq.numel() - 1)
    n_relevant = torch.where(uniq[pos] == qk, g_counts[pos], torch.zeros_like(pos))
    rows = max(1, min(chunk_size, MAX_CHUNK_ELEMENTS // m))

    starts = range(0, n, rows)
    for s in tqdm(starts, desc="retrieval", unit="chunk", disable=not progress):
        e = min(s + rows, n)
        # raw dot products scaled afterwards: identical gallery rows get bit-identical
        # similarities, so ties are real ties and the index rule decides them
        sims = (q[s:e] @ g_t) * q_inv[s:e, None] * g_inv[None, :]
        ranking = _full_ranking(sims) if compute_map else _top_indices(sims, kmax)
        rel = gk[ranking] == qk[s:e, None]                     # (rows, M or kmax)
        cum = rel.cumsum(1)
        for k in ks:
            got = cum[:, eff[k] - 1]
            hits[k] += (got.to(torch.float64) / eff[k]).sum()
            found[k] += (got > 0).sum()
        if pair_index is not None:
            is_pair = ranking[:, :kmax] == pair_index[s:e, None]
            pair_cum = is_pair.cumsum(1)
            for k in ks:
                pair_found[k] += (pair_cum[:, eff[k] - 1] > 0).sum()
        if compute_map:
            ranks = torch.arange(1, m + 1, device=device, dtype=torch.float64)
            prec = cum.to(torch.float64) / ranks
            r = n_relevant[s:e].to(torch.float64)
            ap = (prec * rel).sum(1) / r.clamp_min(1)
            ap_sum += ap.sum()                                  # AP is 0 where r == 0

    out: dict = {}
    for k in ks:
        out[f"precision@{k}"] = float(hits[k]) / n
        out[f"recall@{k}"] = int(found[k]) / n
        if pair_index is not None:
            out[f"pair_recall@{k}"] = int(pair_found[k]) / n
    with_relevant = int((n_relevant > 0).sum())
    if compute_map:
        out["mAP"] = float(ap_sum) / with_relevant if with_relevant else float("nan")
    out["num_queries"] = n
    out["gallery_size"] = m
    out["queries_without_relevant"] = n - with_relevant
    out["clamped_ks"] = [k for k in ks if k > m]
    return out


def evaluate_retrieval(img_emb: torch.Tensor, txt_emb: torch.Tensor, keys: Mapping[str, torch.Tensor],
                       ks: Sequence[int] = (1, 5, 10), *, chunk_size: int = 2048,
                       compute_map: bool = True, progress: bool = False) -> dict:
    """Image-to-text and text-to-image retrieval over one paired test set.

    Row i of ``img_emb`` ``(N, D)`` and of ``txt_emb`` ``(N, D)`` belong to sample i (so
    ``pair_index`` is ``arange(N)``); ``keys`` maps a relevance name (e.g. ``"disease"``,
    ``"fine"``, from :func:`~medtrim_ext.evaluation.keys.keys_for`) to ``(N,)`` keys shared by
    both modalities. Returns ``{"i2t": {name: metrics}, "t2i": {name: metrics}}`` with the
    metrics of :func:`retrieval_metrics`.
    """
    img_emb = _check_embeddings("img_emb", img_emb)
    txt_emb = _check_embeddings("txt_emb", txt_emb)
    if img_emb.shape[0] != txt_emb.shape[0]:
        raise ValueError(f"img_emb has {img_emb.shape[0]} rows but txt_emb has {txt_emb.shape[0]}: "
                         f"row i of both must be sample i")
    if not isinstance(keys, Mapping) or not keys:
        raise TypeError("keys must be a non-empty dict {relevance name: (N,) key tensor}")
    n = img_emb.shape[0]
    pair = torch.arange(n, device=img_emb.device)
    out: dict = {"i2t": {}, "t2i": {}}
    for name, k in keys.items():
        if not isinstance(name, str):
            raise TypeError(f"keys must be named by strings, got {name!r}")
        k = check_ids(f"keys[{name!r}]", k, n, None)
        for direction, (qe, ge) in (("i2t", (img_emb, txt_emb)), ("t2i", (txt_emb, img_emb))):
            out[direction][name] = retrieval_metrics(qe, ge, k, k, ks, pair_index=pair,
                                                     chunk_size=chunk_size, compute_map=compute_map,
                                                     progress=progress)
    return out
