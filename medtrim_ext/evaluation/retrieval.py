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

__all__ = ["text_groups", "evaluate_retrieval", "retrieval_metrics"]

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


def text_groups(texts: Sequence[str]) -> torch.Tensor:
    """int64 ``(N,)``: equal ids for texts that are identical after normalisation (Unicode NFKC,
    lower case, every run of characters other than letters and digits one space, no space at
    the ends), so that retrieving another study's identical report counts as retrieving one's
    own (CXR-CLIP's evaluation counts identical texts as one item)."""
    import re
    import unicodedata

    ids: dict = {}
    out = []
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"texts must be strings, got {type(t).__name__}")
        norm = re.sub(r"[\W_]+", " ", unicodedata.normalize("NFKC", t).lower()).strip()
        out.append(ids.setdefault(norm, len(ids)))
    return torch.tensor(out, dtype=torch.int64)


def _dcg_weights(k: int, device) -> torch.Tensor:
    """1 / log2(rank + 1) for ranks 1..k."""
    return 1.0 / torch.log2(torch.arange(2, k + 2, device=device, dtype=torch.float64))


def retrieval_metrics(query: torch.Tensor, gallery: torch.Tensor, query_keys: torch.Tensor,
                      gallery_keys: torch.Tensor, ks: Sequence[int] = (1, 5, 10),
                      pair_index: torch.Tensor | None = None, chunk_size: int = 2048, *,
                      compute_map: bool = True, progress: bool = False,
                      pair_groups: torch.Tensor | None = None, graded=None, ndcg_k: int = 10) -> dict:
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
      the top k; with ``pair_groups`` (``(M,)`` ids of the gallery items, e.g.
      :func:`text_groups` of the reports), a gallery item in the same group as the own pair
      counts as the pair (identical reports are one item), and ``exact_pair_recall@K`` keeps
      the strict own-pair share.
    - ``ndcg@{ndcg_k}`` (only with ``graded``): graded retrieval. ``graded`` is ``(query
      entities, gallery entities, miner)`` (:class:`~medtrim_ext.MetaEntities`, a
      :class:`~medtrim_ext.TripletMiner` for the weights): the relevance of gallery item j to
      query i is the meta-entity score ``S(i, j)`` in [0, 1]. With ``r_i(1..)`` the relevances
      of query i's ranking, ``DCG_i = sum_{j<=k} r_i(j) / log2(j + 1)`` and ``IDCG_i`` the same
      sum over the k largest relevances of the whole gallery (linear gain); ``nDCG_i = DCG_i /
      IDCG_i``, averaged over the queries with ``IDCG_i > 0`` (``queries_without_graded`` counts
      the others: no gallery item shares anything with them).
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
    if pair_groups is not None:
        if pair_index is None:
            raise ValueError("pair_groups needs pair_index")
        pair_groups = check_ids("pair_groups", pair_groups, m, None).to(device)
    if graded is not None:
        check_int("ndcg_k", ndcg_k)
        q_ents, g_ents, miner = graded
        if len(q_ents) != n or len(g_ents) != m:
            raise ValueError(f"graded entities must have {n} (queries) and {m} (gallery) rows, got "
                             f"{len(q_ents)} and {len(g_ents)}")

    eff = {k: min(k, m) for k in ks}
    kmax = max(eff.values())
    dtype = torch.promote_types(torch.promote_types(query.dtype, gallery.dtype), torch.float32)
    q, g = query.to(dtype), gallery.to(dtype)
    q_inv, g_inv = _inverse_norms(q), _inverse_norms(g)
    g_t = g.t()

    hits = {k: torch.zeros((), dtype=torch.float64, device=device) for k in ks}   # sum of shares
    found = {k: torch.zeros((), dtype=torch.int64, device=device) for k in ks}
    pair_found = {k: torch.zeros((), dtype=torch.int64, device=device) for k in ks}
    exact_found = {k: torch.zeros((), dtype=torch.int64, device=device) for k in ks}
    kn = min(ndcg_k, m) if graded is not None else 0
    ndcg_sum = torch.zeros((), dtype=torch.float64, device=device)
    ndcg_count = 0
    if graded is not None:
        weights = _dcg_weights(kn, device)
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
        ranking = _full_ranking(sims) if compute_map else _top_indices(sims, max(kmax, kn))
        rel = gk[ranking] == qk[s:e, None]                     # (rows, M or kmax)
        cum = rel.cumsum(1)
        for k in ks:
            got = cum[:, eff[k] - 1]
            hits[k] += (got.to(torch.float64) / eff[k]).sum()
            found[k] += (got > 0).sum()
        if pair_index is not None:
            is_pair = ranking[:, :kmax] == pair_index[s:e, None]
            pair_cum = is_pair.cumsum(1)
            if pair_groups is not None:   # any item identical (after normalisation) to the pair
                same = pair_groups[ranking[:, :kmax]] == pair_groups[pair_index[s:e]][:, None]
                group_cum = same.cumsum(1)
            for k in ks:
                exact_found[k] += (pair_cum[:, eff[k] - 1] > 0).sum()
                pair_found[k] += ((group_cum if pair_groups is not None else pair_cum)[:, eff[k] - 1] > 0).sum()
        if graded is not None:
            gain = miner.score_matrix(q_ents[s:e], g_ents).to(device, torch.float64)   # (rows, M) in [0, 1]
            dcg = (gain.gather(1, ranking[:, :kn]) * weights).sum(1)
            idcg = (gain.topk(kn, dim=1).values * weights).sum(1)
            has = idcg > 0
            ndcg_sum += (dcg[has] / idcg[has]).sum()
            ndcg_count += int(has.sum())
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
            if pair_groups is not None:
                out[f"exact_pair_recall@{k}"] = int(exact_found[k]) / n
    with_relevant = int((n_relevant > 0).sum())
    if compute_map:
        out["mAP"] = float(ap_sum) / with_relevant if with_relevant else float("nan")
    if graded is not None:
        out[f"ndcg@{ndcg_k}"] = float(ndcg_sum) / ndcg_count if ndcg_count else float("nan")
        out["queries_without_graded"] = n - ndcg_count
    out["num_queries"] = n
    out["gallery_size"] = m
    out["queries_without_relevant"] = n - with_relevant
    out["clamped_ks"] = [k for k in ks if k > m]
    return out


def evaluate_retrieval(img_emb: torch.Tensor, txt_emb: torch.Tensor, keys: Mapping[str, torch.Tensor],
                       ks: Sequence[int] = (1, 5, 10), *, chunk_size: int = 2048,
                       compute_map: bool = True, progress: bool = False,
                       texts: Sequence[str] | None = None, entities=None, miner=None) -> dict:
    """Image-to-text and text-to-image retrieval over one paired test set.

    Row i of ``img_emb`` ``(N, D)`` and of ``txt_emb`` ``(N, D)`` belong to sample i (so
    ``pair_index`` is ``arange(N)``); ``keys`` maps a relevance name (e.g. ``"disease"``,
    ``"fine"``, from :func:`~medtrim_ext.evaluation.keys.keys_for`) to ``(N,)`` keys shared by
    both modalities. Returns ``{"i2t": {name: metrics}, "t2i": {name: metrics}}`` with the
    metrics of :func:`retrieval_metrics`. ``texts`` (the N reports) makes ``pair_recall@K``
    count identical reports as one item (:func:`text_groups`); ``entities`` (the N samples'
    :class:`~medtrim_ext.MetaEntities`) adds the graded ``ndcg@10`` under ``out[d]["graded"]``,
    scored with ``miner`` (default: the published weights).
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
    groups = None
    if texts is not None:
        if len(texts) != n:
            raise ValueError(f"texts has {len(texts)} entries for {n} samples")
        groups = text_groups(texts)
    if entities is not None and len(entities) != n:
        raise ValueError(f"entities has {len(entities)} rows for {n} samples")
    if entities is not None and miner is None:
        from ..mining.miner import TripletMiner

        miner = TripletMiner()
    out: dict = {"i2t": {}, "t2i": {}}
    for position, (name, k) in enumerate(keys.items()):
        if not isinstance(name, str):
            raise TypeError(f"keys must be named by strings, got {name!r}")
        k = check_ids(f"keys[{name!r}]", k, n, None)
        # the graded ranking needs no key: computed with the first key's ranking, not a pass of its own
        graded = (entities, entities, miner) if entities is not None and position == 0 else None
        for direction, (qe, ge) in (("i2t", (img_emb, txt_emb)), ("t2i", (txt_emb, img_emb))):
            metrics = retrieval_metrics(qe, ge, k, k, ks, pair_index=pair, chunk_size=chunk_size,
                                        compute_map=compute_map, progress=progress, pair_groups=groups,
                                        graded=graded)
            if graded is not None:   # a key-free entry of its own
                out[direction]["graded"] = {"ndcg@10": metrics.pop("ndcg@10"),
                                            "queries_without_graded": metrics.pop("queries_without_graded"),
                                            "num_queries": metrics["num_queries"],
                                            "gallery_size": metrics["gallery_size"]}
            out[direction][name] = metrics
    return out
