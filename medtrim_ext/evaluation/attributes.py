"""Where fine-grained retrieval gains or loses: agreement of the top K on each attribute kind.

MedTrim's claim is about what radiologists care about beyond the disease: side, size or severity,
and zone. With ground-truth attributes (the built-in phantoms, a manifest with an attributes file)
this asks, for every query finding that has an attribute of a kind (e.g. a *left* effusion has a
side), how many of the query's top-K retrieved items have that finding with the same value:

- ``same@K``: share of the top K with the same disease and the same value (a miss of the disease
  counts as a miss);
- ``same_given_disease@K``: the same share among the top-K items that have the disease at all
  (does the ranking tell the values apart within the disease?); NaN where no item has it;
- ``queries``: how many (query, finding) pairs have an attribute of that kind.

Shares are averaged over (query, finding) pairs. It also reports the hub diagnostic: the share of
"no finding" items among all top-K lists (``no_finding@K``, against ``no_finding_share``, their share
of the gallery), how many distinct gallery items appear in any top K (``distinct@K``), the share of
queries whose top K holds the single most retrieved item (``hub_share@K``) and the gallery size.

A collapse (:func:`collapse_reasons`) is when the top K of all queries hold at most
``COLLAPSE_DISTINCT_FACTOR * K`` distinct items, or one item is in the top K of more than
``COLLAPSE_HUB_SHARE`` of the queries; judged only for galleries of at least
``COLLAPSE_MIN_GALLERY_FACTOR * K`` items (a smaller one fills every top K with the same few items
anyway). Then the ranking ignores the query and the retrieval metrics measure a constant list.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from ..utils.checks import check_int
from .keys import _canonical_attributes
from .retrieval import _check_embeddings, _inverse_norms, _top_indices

ATTRIBUTE_KINDS = ("side", "size", "zone")
# the collapse rule (module docstring): a healthy ranking of a gallery of N >> K items spreads the
# top K over far more than 2K items, and no item is among the K best of most queries
COLLAPSE_DISTINCT_FACTOR = 2
COLLAPSE_HUB_SHARE = 0.5
COLLAPSE_MIN_GALLERY_FACTOR = 4


def top_k(query: torch.Tensor, gallery: torch.Tensor, k: int, chunk_size: int = 1024) -> torch.Tensor:
    """``(N, k)`` gallery indices of each query's k most similar items (cosine), best first, ties
    to the lower index (the ranking :func:`~.retrieval.retrieval_metrics` scores)."""
    q = query.float() * _inverse_norms(query.float())[:, None]
    g = gallery.float() * _inverse_norms(gallery.float())[:, None]
    k = min(k, g.shape[0])
    return torch.cat([_top_indices(q[i:i + chunk_size] @ g.T, k) for i in range(0, q.shape[0], chunk_size)])


def attribute_agreement(top: torch.Tensor, query_attributes: Sequence[Mapping],
                        gallery_attributes: Sequence[Mapping],
                        kinds: Sequence[str] = ATTRIBUTE_KINDS) -> dict:
    """Per attribute kind, how the top-K lists ``top`` ``(N, K)`` agree with each query's findings
    (see the module docstring). Attributes are ``{disease: {kind: value}}`` dicts; a value of
    ``None`` means the finding has no such attribute."""
    q_attrs = _canonical_attributes(query_attributes)
    g_attrs = _canonical_attributes(gallery_attributes)
    if top.dim() != 2 or top.shape[0] != len(q_attrs):
        raise ValueError(f"top must be (queries, K) with {len(q_attrs)} rows, got {tuple(top.shape)}")
    k = top.shape[1]
    rows = top.tolist()
    out = {}
    for kind in kinds:
        same, same_given, n_pairs, n_given = 0.0, 0.0, 0, 0
        for q, retrieved in zip(q_attrs, rows):
            for disease, attrs in q.items():
                value = attrs.get(kind)
                if value is None:
                    continue
                hits = [g_attrs[j].get(disease) for j in retrieved]
                having = [h for h in hits if h is not None]
                matching = sum(1 for h in having if h.get(kind) == value)
                same += matching / k
                n_pairs += 1
                if having:
                    same_given += matching / len(having)
                    n_given += 1
        out[kind] = {"queries": n_pairs,
                     f"same@{k}": same / n_pairs if n_pairs else float("nan"),
                     f"same_given_disease@{k}": same_given / n_given if n_given else float("nan")}
    return out


def hub_diagnostic(top: torch.Tensor, gallery_attributes: Sequence[Mapping]) -> dict:
    """How much the top-K lists concentrate on "no finding" items and on a few items overall:
    ``no_finding@K``, ``no_finding_share``, ``distinct@K`` (distinct items in any top K),
    ``hub_share@K`` (share of the queries whose top K holds the most retrieved item; a top-K list
    has no repeats, so it is that item's count over the queries) and ``gallery_size``."""
    normal = torch.tensor([not a for a in _canonical_attributes(gallery_attributes)], dtype=torch.bool)
    k = top.shape[1]
    hub = int(torch.bincount(top.flatten()).max()) / top.shape[0] if top.numel() else float("nan")
    return {f"no_finding@{k}": float(normal[top].float().mean()) if top.numel() else float("nan"),
            "no_finding_share": float(normal.float().mean()) if len(normal) else float("nan"),
            f"distinct@{k}": len(set(top.flatten().tolist())),
            f"hub_share@{k}": hub,
            "gallery_size": len(normal)}


def collapse_reasons(distinct: float, hub_share: float, k: int, gallery_size: float) -> list[str]:
    """Why the top-K lists of one evaluation look collapsed (the rule of the module docstring);
    empty when they do not, when the gallery is under ``COLLAPSE_MIN_GALLERY_FACTOR * K`` items, or
    for a part that is NaN (not measured)."""
    if math.isfinite(gallery_size) and gallery_size < COLLAPSE_MIN_GALLERY_FACTOR * k:
        return []
    out = []
    if math.isfinite(distinct) and distinct <= COLLAPSE_DISTINCT_FACTOR * k:
        out.append(f"the top {k} of all queries hold only {distinct:.0f} distinct items "
                   f"(at most {COLLAPSE_DISTINCT_FACTOR}K = {COLLAPSE_DISTINCT_FACTOR * k})")
    if math.isfinite(hub_share) and hub_share > COLLAPSE_HUB_SHARE:
        out.append(f"one item is in the top {k} of {hub_share:.0%} of the queries "
                   f"(over {COLLAPSE_HUB_SHARE:.0%})")
    return out


def evaluate_attributes(img_emb: torch.Tensor, txt_emb: torch.Tensor, attributes: Sequence[Mapping],
                        k: int = 5, kinds: Sequence[str] = ATTRIBUTE_KINDS) -> dict:
    """Image->text and text->image :func:`attribute_agreement` (for ``kinds``; none for data
    without ground-truth attributes, whose meta-entity records still give the hub diagnostic) and
    :func:`hub_diagnostic` of one paired set (row i of both embeddings and ``attributes[i]``
    belong to sample i)."""
    img_emb = _check_embeddings("img_emb", img_emb)
    txt_emb = _check_embeddings("txt_emb", txt_emb)
    if not (img_emb.shape[0] == txt_emb.shape[0] == len(attributes)):
        raise ValueError(f"img_emb ({img_emb.shape[0]} rows), txt_emb ({txt_emb.shape[0]}) and "
                         f"attributes ({len(attributes)}) must describe the same samples")
    check_int("k", k)
    out = {}
    for direction, (q, g) in (("i2t", (img_emb, txt_emb)), ("t2i", (txt_emb, img_emb))):
        top = top_k(q, g, k)
        out[direction] = {**attribute_agreement(top, attributes, attributes, kinds),
                          "hub": hub_diagnostic(top, attributes)}
    return out
