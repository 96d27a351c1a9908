"""Relevance keys and retrieval metrics, checked against a brute-force reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score

from medtrim_ext import MetaEntities
from medtrim_ext.evaluation import (attribute_keys, disease_set_keys, entity_keys, evaluate_retrieval,
                                    keys_for, retrieval_metrics)
from medtrim_ext.evaluation import retrieval as retrieval_mod


# -- keys -------------------------------------------------------------------------------------

RECORDS = [
    {},
    {"pleural effusion": {"adjs": ["small"], "dirs": ["left"]}},
    {"pleural effusion": {"adjs": ["large"], "dirs": ["left"]}},
    {"pleural effusion": {"adjs": ["small"], "dirs": ["left"]}},
    {"pleural effusion": {"adjs": [], "dirs": ["right"]}, "edema": {"adjs": [], "dirs": []}},
    {"edema": {"adjs": [], "dirs": []}, "pleural effusion": {"adjs": [], "dirs": ["right"]}},
    {"no finding": {}},
]


def _same(keys: torch.Tensor) -> list[list[bool]]:
    k = keys.tolist()
    return [[a == b for b in k] for a in k]


def test_disease_and_entity_keys():
    ents = MetaEntities.from_records(RECORDS)
    d, e = disease_set_keys(ents), entity_keys(ents)
    assert d.dtype == e.dtype == torch.int64 and d.shape == e.shape == (7,)
    # disease sets: {}, {pe} x3, {pe, edema} x2, {}
    assert d[0] == d[6] and d[1] == d[2] == d[3] and d[4] == d[5]
    assert len({d[0].item(), d[1].item(), d[4].item()}) == 3
    # fine: small/left == small/left, large differs, descriptor order of diseases irrelevant
    assert e[1] == e[3] and e[1] != e[2] and e[4] == e[5] and e[0] == e[6]
    assert len(set(e.tolist())) == 4
    # dense ids
    assert sorted(set(e.tolist())) == list(range(4))
    assert keys_for(entities=ents)["fine"].tolist() == e.tolist()


def test_entity_keys_ignore_descriptors_of_absent_diseases():
    ents = MetaEntities.from_records([{"edema": {"adjs": ["mild"], "dirs": []}}, {"edema": {"adjs": ["mild"], "dirs": []}}])
    adj = ents.adjective_bits.clone()
    adj[1, 0, 0] = 1  # raw bits of disease 0, which is absent in sample 1
    raw = MetaEntities(ents.disease_bits, adj, ents.direction_bits, ents.vocabulary)
    assert entity_keys(raw)[0] == entity_keys(raw)[1]


def test_keys_of_empty_and_single():
    ents = MetaEntities.from_records([])
    assert disease_set_keys(ents).shape == (0,) and entity_keys(ents).shape == (0,)
    assert attribute_keys([]).shape == (0,)
    assert disease_set_keys(MetaEntities.from_records([{}])).tolist() == [0]


def test_attribute_keys_canonical():
    attrs = [
        {"pleural effusion": {"side": "left", "size": "small", "zone": None}},
        {"Pleural  Effusion": {"size": "Small", "side": "left"}},
        {"pleural effusion": {"side": "right", "size": "small", "zone": None}},
        {},
        {"no finding": None},
        {"edema": None, "pleural effusion": {"side": "left", "size": "small"}},
        {"pleural effusion": {"side": "left", "size": "small"}, "edema": {}},
        {"lesion": {"zones": ["upper", "lower"]}},
        {"lesion": {"zones": ["lower", "upper", "upper"]}},
    ]
    k = attribute_keys(attrs)
    assert k[0] == k[1] and k[0] != k[2] and k[3] == k[4] and k[5] == k[6] and k[7] == k[8]
    assert k[0] != k[5]
    both = keys_for(attributes=attrs)
    dk = both["disease"]
    assert dk[0] == dk[1] == dk[2] and dk[3] == dk[4] and dk[5] == dk[6] and dk[0] != dk[5]


@pytest.mark.parametrize("attrs, exc, match", [
    ([["pleural effusion"]], TypeError, r"attributes\[0\]"),
    ([{"pleural effusion": "left"}], TypeError, r"attributes\[0\]"),
    ([{}, {"edema": {"size": float("nan")}}], ValueError, r"attributes\[1\]"),
    ([{"edema": {"size": object()}}], TypeError, r"attributes\[0\]"),
    ([{"no finding": None, "edema": None}], ValueError, "no finding"),
    ([{"Edema": None, "edema ": None}], ValueError, "twice"),
    ({"edema": None}, TypeError, "sequence"),
])
def test_attribute_keys_errors(attrs, exc, match):
    with pytest.raises(exc, match=match):
        attribute_keys(attrs)


def test_keys_for_arguments():
    ents = MetaEntities.from_records(RECORDS[:2])
    with pytest.raises(ValueError, match="entities=... or attributes"):
        keys_for()
    with pytest.raises(ValueError, match="attributes has 3"):
        keys_for(entities=ents, attributes=[{}, {}, {}])
    with pytest.raises(TypeError, match="MetaEntities"):
        disease_set_keys(RECORDS)
    # ground truth decides when both are given
    k = keys_for(entities=ents, attributes=[{"edema": None}, {"edema": None}])
    assert k["disease"].tolist() == [0, 0] and k["fine"].tolist() == [0, 0]


# -- retrieval: brute-force reference ----------------------------------------------------------

def _similarities(q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The cosine matrix in the implementation's arithmetic: exact integer dot products scaled by
    inverse norms, so that both see the same ties."""
    dtype = torch.promote_types(torch.promote_types(q.dtype, g.dtype), torch.float32)
    q, g = q.to(dtype), g.to(dtype)
    qi, gi = retrieval_mod._inverse_norms(q), retrieval_mod._inverse_norms(g)
    return (q @ g.T) * qi[:, None] * gi[None, :]


def brute_force(q, g, qk, gk, ks, pair=None):
    sims = _similarities(q, g).tolist()
    qk, gk = qk.tolist(), gk.tolist()
    n, m = len(qk), len(gk)
    out = {}
    rankings = [sorted(range(m), key=lambda j: (-sims[i][j], j)) for i in range(n)]
    rels = [[gk[j] == qk[i] for j in rankings[i]] for i in range(n)]
    for k in ks:
        kk = min(k, m)
        out[f"precision@{k}"] = sum(sum(r[:kk]) / kk for r in rels) / n
        out[f"recall@{k}"] = sum(any(r[:kk]) for r in rels) / n
        if pair is not None:
            out[f"pair_recall@{k}"] = sum(int(pair[i]) in rankings[i][:kk] for i in range(n)) / n
    aps = []
    for r in rels:
        if sum(r):
            hits, total = 0, 0.0
            for rank, is_rel in enumerate(r, 1):
                if is_rel:
                    hits += 1
                    total += hits / rank
            aps.append(total / sum(r))
    out["mAP"] = sum(aps) / len(aps) if aps else float("nan")
    out["queries_without_relevant"] = n - len(aps)
    return out


def _assert_matches(got: dict, ref: dict, ks, compute_map: bool):
    for key, want in ref.items():
        if key == "mAP" and not compute_map:
            assert "mAP" not in got
            continue
        if isinstance(want, float) and math.isnan(want):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(want, abs=1e-12), key


@st.composite
def retrieval_case(draw):
    n = draw(st.integers(1, 7))
    m = draw(st.integers(1, 9))
    d = draw(st.integers(1, 3))
    pool = draw(st.integers(1, 4))   # small pools give duplicate rows, i.e. exact ties
    vec = st.lists(st.integers(-2, 2), min_size=d, max_size=d)
    q_pool = draw(st.lists(vec, min_size=pool, max_size=pool))
    g_pool = draw(st.lists(vec, min_size=pool, max_size=pool))
    q = [q_pool[draw(st.integers(0, pool - 1))] for _ in range(n)]
    g = [g_pool[draw(st.integers(0, pool - 1))] for _ in range(m)]
    n_keys = draw(st.sampled_from([1, 2, 3, 100]))  # 1: all identical, 100: mostly distinct
    qk = draw(st.lists(st.integers(0, n_keys - 1), min_size=n, max_size=n))
    gk = draw(st.lists(st.integers(0, n_keys - 1), min_size=m, max_size=m))
    ks = draw(st.lists(st.integers(1, 12), min_size=1, max_size=4))
    pair = draw(st.none() | st.lists(st.integers(0, m - 1), min_size=n, max_size=n))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    return (torch.tensor(q, dtype=dtype), torch.tensor(g, dtype=dtype), torch.tensor(qk),
            torch.tensor(gk), ks, None if pair is None else torch.tensor(pair),
            draw(st.integers(1, 5)), draw(st.booleans()))


@settings(max_examples=150)
@given(retrieval_case())
def test_retrieval_matches_brute_force(case):
    q, g, qk, gk, ks, pair, chunk, compute_map = case
    got = retrieval_metrics(q, g, qk, gk, ks, pair_index=pair, chunk_size=chunk, compute_map=compute_map)
    ref = brute_force(q, g, qk, gk, sorted(set(ks)), pair)
    _assert_matches(got, ref, ks, compute_map)
    assert got["num_queries"] == len(qk) and got["gallery_size"] == len(gk)
    assert got["clamped_ks"] == [k for k in sorted(set(ks)) if k > len(gk)]
    if pair is None:
        assert not any(k.startswith("pair_recall") for k in got)


def test_retrieval_random_embeddings_and_memory_cap(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    q, g = torch.randn(40, 8, generator=gen), torch.randn(57, 8, generator=gen)
    qk, gk = torch.randint(0, 4, (40,), generator=gen), torch.randint(0, 4, (57,), generator=gen)
    pair = torch.randint(0, 57, (40,), generator=gen)
    ref = brute_force(q, g, qk, gk, (1, 5, 10), pair)
    # the rows per chunk shrink to fit the element budget: 100 // 57 = 1 row at a time
    monkeypatch.setattr(retrieval_mod, "MAX_CHUNK_ELEMENTS", 100)
    for compute_map in (True, False):
        got = retrieval_metrics(q, g, qk, gk, (1, 5, 10), pair_index=pair, compute_map=compute_map)
        _assert_matches(got, ref, (1, 5, 10), compute_map)
    # the similarity is the cosine: scaling rows changes nothing, and the best match is the
    # argmax of F.cosine_similarity
    got = retrieval_metrics(q * 3.0, g * 0.01, qk, gk, (1, 5, 10), pair_index=pair)
    _assert_matches(got, ref, (1, 5, 10), True)
    best = F.cosine_similarity(q[:, None], g[None], dim=-1).argmax(1)
    assert retrieval_metrics(q, g, qk, gk, (1,), pair_index=best)["pair_recall@1"] == 1.0


def test_retrieval_map_is_scikit_learn_average_precision():
    """Without ties, mAP is the mean over queries with a relevant item of sklearn's
    average_precision_score, and recall@K its top-K hit rate."""
    gen = torch.Generator().manual_seed(3)
    q, g = torch.randn(40, 6, generator=gen), torch.randn(90, 6, generator=gen)
    qk, gk = torch.randint(0, 8, (40,), generator=gen), torch.randint(0, 7, (90,), generator=gen)
    res = retrieval_metrics(q, g, qk, gk, ks=(1, 5), chunk_size=7)
    sims = _similarities(q, g).numpy()
    rel = (qk[:, None] == gk[None, :]).numpy()
    aps = [average_precision_score(r, s) for r, s in zip(rel, sims) if r.any()]
    assert res["mAP"] == pytest.approx(sum(aps) / len(aps), abs=1e-12)
    for k in (1, 5):
        top = (-sims).argsort(1)[:, :k]
        assert res[f"recall@{k}"] == pytest.approx(np.take_along_axis(rel, top, 1).any(1).mean(), abs=1e-12)


@pytest.mark.parametrize("compute_map", [True, False])
def test_ties_go_to_the_lower_gallery_index(compute_map):
    g = torch.ones(6, 3)
    q = torch.ones(1, 3)
    first = retrieval_metrics(q, g, torch.tensor([1]), torch.tensor([1, 0, 0, 0, 0, 0]), (1, 5, 6),
                              pair_index=torch.tensor([4]), compute_map=compute_map)
    assert first["precision@1"] == 1.0 and first["pair_recall@1"] == 0.0
    assert first["pair_recall@5"] == 1.0
    last = retrieval_metrics(q, g, torch.tensor([1]), torch.tensor([0, 0, 0, 0, 0, 1]), (1, 5, 6),
                             pair_index=torch.tensor([5]), compute_map=compute_map)
    assert last["recall@5"] == 0.0 and last["recall@6"] == 1.0 and last["pair_recall@5"] == 0.0
    if compute_map:
        assert first["mAP"] == 1.0 and last["mAP"] == pytest.approx(1 / 6)


def test_zero_rows_and_clamping():
    q = torch.zeros(2, 4)
    g = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0], [0, 1.0, 0, 0]])
    res = retrieval_metrics(q, g, torch.tensor([0, 5]), torch.tensor([7, 7, 0]), ks=(1, 10))
    # every similarity is 0: rank by index, only gallery item 2 is relevant to query 0
    assert res["precision@1"] == 0.0 and res["recall@10"] == 0.5
    assert res["precision@10"] == pytest.approx((1 / 3) / 2)
    assert res["clamped_ks"] == [10] and res["queries_without_relevant"] == 1
    assert res["mAP"] == pytest.approx(1 / 3)


def test_no_relevant_anywhere_gives_nan_map():
    res = retrieval_metrics(torch.ones(2, 2), torch.ones(3, 2), torch.tensor([1, 2]), torch.tensor([0, 0, 0]))
    assert math.isnan(res["mAP"]) and res["recall@1"] == 0.0 and res["queries_without_relevant"] == 2


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(query=torch.tensor([[float("nan"), 0.0]])), ValueError, "query contains NaN"),
    (dict(gallery=torch.tensor([[1.0, 0.0], [float("inf"), 0.0]])), ValueError, "gallery contains infinite"),
    (dict(query=torch.ones(1, 3)), ValueError, "dim"),
    (dict(query=torch.ones(2)), ValueError, "query must be 2-D"),
    (dict(query=torch.ones(1, 2, dtype=torch.int64)), TypeError, "floating"),
    (dict(query=torch.ones(0, 2), query_keys=torch.zeros(0, dtype=torch.int64)), ValueError, "no rows"),
    (dict(query_keys=torch.tensor([0, 1])), ValueError, "query_keys must have shape"),
    (dict(gallery_keys=torch.tensor([0.0, 1.0])), TypeError, "gallery_keys must be an integer"),
    (dict(ks=(0,)), ValueError, "ks"),
    (dict(ks=()), ValueError, "ks"),
    (dict(pair_index=torch.tensor([2])), ValueError, "pair_index"),
    (dict(chunk_size=0), ValueError, "chunk_size"),
    (dict(query=[[1.0, 0.0]]), TypeError, "query must be a torch.Tensor"),
])
def test_retrieval_errors(kwargs, exc, match):
    args = dict(query=torch.ones(1, 2), gallery=torch.ones(2, 2), query_keys=torch.tensor([0]),
                gallery_keys=torch.tensor([0, 1]))
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        retrieval_metrics(**args)


def test_evaluate_retrieval_layout_and_values():
    gen = torch.Generator().manual_seed(1)
    txt = torch.randn(12, 5, generator=gen)
    img = txt + 0.01 * torch.randn(12, 5, generator=gen)   # nearly aligned pairs
    ents = MetaEntities.from_records((RECORDS * 2)[:12])
    keys = keys_for(entities=ents)
    res = evaluate_retrieval(img, txt, keys, ks=(1, 5))
    assert set(res) == {"i2t", "t2i"} and set(res["i2t"]) == {"disease", "fine"}
    for direction in ("i2t", "t2i"):
        for rel in ("disease", "fine"):
            r = res[direction][rel]
            assert r["pair_recall@1"] == 1.0 and r["recall@1"] == 1.0
            assert r["gallery_size"] == 12
        # disease relevance is coarser, so at least as many relevant items
        assert res[direction]["disease"]["precision@5"] >= res[direction]["fine"]["precision@5"]
    ref = brute_force(txt, img, keys["fine"], keys["fine"], (1, 5), torch.arange(12))
    _assert_matches(res["t2i"]["fine"], ref, (1, 5), True)


def test_evaluate_retrieval_errors():
    with pytest.raises(ValueError, match="row i of both"):
        evaluate_retrieval(torch.ones(3, 2), torch.ones(4, 2), {"disease": torch.zeros(3, dtype=torch.int64)})
    with pytest.raises(TypeError, match="non-empty dict"):
        evaluate_retrieval(torch.ones(3, 2), torch.ones(3, 2), {})
    with pytest.raises(ValueError, match=r"keys\['fine'\]"):
        evaluate_retrieval(torch.ones(3, 2), torch.ones(3, 2), {"fine": torch.zeros(2, dtype=torch.int64)})
    with pytest.raises(ValueError, match="txt_emb contains NaN"):
        evaluate_retrieval(torch.ones(1, 2), torch.tensor([[float("nan"), 1.0]]), {"d": torch.zeros(1, dtype=torch.int64)})
