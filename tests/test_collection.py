"""Whole collections, folded (issue 23): MetaEntities.unique, TripletMiner.mine_collection (K
triplets per anchor) and TripletMiner.neighbors against the pure-PyTorch reference, exactly, under
both tie rules, with every walk of the kernel forced in turn; order and chunk invariance; the tie
distribution over candidate samples; memory that never grows as N x N."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medtrim_ext import MetaEntities, TripletMiner, reference
from medtrim_ext.entities.synthetic import synthetic_records
from helpers import cuda_only, entity_sets, random_entities, generic_vocabulary

WALKS = ["", "merge", "scan", "merged"]   # MEDTRIM_FOLDED_WALK: by cost, or one walk forced
tie_breaks = st.sampled_from(["random", "first"])


def reference_k(miner, anchors, candidates, anchor_ids, candidate_ids, draw, k):
    cands = anchors if candidates is None else candidates
    scores = reference.score_matrix(anchors, cands, **miner.weights)
    pos, neg = reference.mine_k_from_scores(scores, anchor_ids, candidate_ids, draw.semi_hard, k,
                                            threshold=miner.threshold, upper=miner.upper,
                                            tie_seed=draw.tie_seed,
                                            min_positive_score=miner.min_positive_score)
    index, score = reference.top_k_from_scores(scores, anchor_ids, candidate_ids, k, tie_seed=draw.tie_seed)
    return pos, neg, index, score


def check_collection(miner, anchors, candidates, anchor_ids, candidate_ids, seed, k, walk, monkeypatch):
    monkeypatch.setenv("MEDTRIM_FOLDED_WALK", walk)
    n = len(anchors)
    draw = miner.draw(n, torch.Generator().manual_seed(seed))
    ids = {} if anchor_ids is None else dict(anchor_ids=anchor_ids)
    if anchor_ids is not None and candidates is not None:
        ids["candidate_ids"] = candidate_ids
    got = miner.mine_collection(anchors, candidates, per_anchor=k, draw=draw, **ids)
    near = miner.neighbors(anchors, candidates, k=k, draw=draw, **ids)
    if anchor_ids is None:
        from medtrim_ext.mining import default_ids

        anchor_ids, candidate_ids = default_ids(n, len(anchors if candidates is None else candidates),
                                                candidates is None, anchors.device)
    pos, neg, index, score = reference_k(miner, anchors, candidates, anchor_ids, candidate_ids, draw, k)
    assert torch.equal(got.positive, pos), (got.positive, pos)
    assert torch.equal(got.negative, neg), (got.negative, neg)
    assert torch.equal(near.index, index)
    assert torch.allclose(near.score, score, equal_nan=True, atol=0, rtol=0)
    # the scores returned are those of the pairs
    cands = anchors if candidates is None else candidates
    full = reference.score_matrix(anchors, cands, **miner.weights)
    rows = torch.arange(n)[:, None].expand(n, k)
    for idx, val in ((got.positive, got.positive_score), (got.negative, got.negative_score)):
        want = torch.where(idx >= 0, full[rows, idx.clamp_min(0)] if full.numel() else torch.zeros(n, k),
                           torch.full((n, k), float("nan")))
        assert torch.allclose(val, want, equal_nan=True, atol=0, rtol=0)
    if k == 1:   # the in-batch miner's triplets, exactly
        t = miner(anchors, candidates, draw=draw, fold=False, **ids)
        assert torch.equal(got.positive[:, 0], t.positive) and torch.equal(got.negative[:, 0], t.negative)
    return got


@settings(max_examples=60, deadline=None)
@given(entity_sets(max_n=30), st.integers(0, 2**31 - 1), tie_breaks, st.sampled_from([0.0, 0.5, 1.0]),
       st.sampled_from([0.0, 0.0, 0.5]), st.sampled_from([1, 1, 2, 3, 6]), st.sampled_from(WALKS),
       st.sampled_from([(0.25, 0.6), (0.0, 1.0), (0.3, 0.3)]))
def test_folded_equals_reference(sets, seed, tie_break, prob, min_positive, k, walk, thr_up):
    anchors, candidates, _ = sets
    miner = TripletMiner(threshold=thr_up[0], upper=thr_up[1], semi_hard_prob=prob, tie_break=tie_break,
                         min_positive_score=min_positive)
    with pytest.MonkeyPatch.context() as mp:
        check_collection(miner, anchors, candidates, None, None, seed, k, walk, mp)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 80), st.integers(1, 5), st.integers(0, 2**31 - 1), tie_breaks,
       st.sampled_from([0.0, 0.5, 1.0]), st.sampled_from([1, 2, 4]), st.sampled_from(WALKS), st.booleans())
def test_folded_with_shared_and_repeated_ids(n, distinct, seed, tie_break, prob, k, walk, bank):
    """Heavy duplication, ids repeated within a set and shared between anchors and candidates:
    a record whose every sample carries the anchor's id is no candidate of it."""
    g = torch.Generator().manual_seed(seed)
    vocab = generic_vocabulary(4, 5, 3)
    anchors = random_entities(n, vocab, p_disease=0.4, p_desc=0.3, generator=g, pool=distinct)
    anchor_ids = torch.randint(0, max(2, n // 3), (n,), generator=g)
    if bank:
        m = int(torch.randint(0, 90, (1,), generator=g))
        cands = random_entities(m, vocab, p_disease=0.4, p_desc=0.3, generator=g, pool=distinct)
        cand_ids = torch.randint(0, max(2, n // 3), (m,), generator=g)
    else:
        cands, cand_ids = None, None
    miner = TripletMiner(semi_hard_prob=prob, tie_break=tie_break)
    with pytest.MonkeyPatch.context() as mp:
        check_collection(miner, anchors, cands, anchor_ids, cand_ids if bank else anchor_ids, seed, k,
                         walk, mp)


@pytest.mark.parametrize("walk", WALKS)
def test_folded_a_few_thousand_with_real_levels(walk, monkeypatch):
    """Large levels (the no-finding record), many small records and the threshold levels: sizes
    where each walk's cost model would choose differently."""
    records = synthetic_records(300, seed=4) + [{}] * 5
    base = MetaEntities.from_records(records)
    g = torch.Generator().manual_seed(1)
    pick = torch.cat([torch.randint(0, len(base), (1500,), generator=g), torch.full((900,), len(base) - 1)])
    ents = base[pick]
    for k in (1, 4):
        check_collection(TripletMiner(), ents, None, None, None, 7, k, walk, monkeypatch)
    check_collection(TripletMiner(semi_hard_prob=0.5, tie_break="first"), ents, None, None, None, 8, 2,
                     walk, monkeypatch)


def test_edge_cases(monkeypatch):
    miner = TripletMiner()
    one = MetaEntities.from_records([{"edema": {}}])
    got = miner.mine_collection(one, per_anchor=3)
    assert (got.positive == -1).all() and (got.negative == -1).all() and got.positive_score.isnan().all()
    # an empty candidate set; all identical records; all ids equal (nobody is anyone's candidate)
    empty = one[torch.zeros(0, dtype=torch.int64)]
    assert (miner.mine_collection(one, empty, anchor_ids=torch.tensor([0]),
                                  candidate_ids=torch.zeros(0, dtype=torch.int64)).positive == -1).all()
    same = one[torch.zeros(6, dtype=torch.int64)]
    check_collection(miner, same, None, None, None, 3, 8, "", monkeypatch)
    nobody = miner.mine_collection(same, anchor_ids=torch.zeros(6, dtype=torch.int64), per_anchor=2)
    assert (nobody.positive == -1).all()
    # a collection of no anchors
    assert miner.mine_collection(empty).positive.shape == (0, 1)
    assert miner.neighbors(empty, k=4).index.shape == (0, 4)
    with pytest.raises(ValueError, match="per_anchor"):
        miner.mine_collection(same, per_anchor=0)
    with pytest.raises(ValueError, match="k"):
        miner.neighbors(same, k=0)


def test_order_and_chunk_invariance():
    """Choices depend on (seed, anchor id, candidate id) only: permuting the anchors (ids travel
    with them) permutes the rows, and mining chunks of anchors against the whole set with the
    rows of one draw gives the rows of one call."""
    g = torch.Generator().manual_seed(2)
    base = MetaEntities.from_records(synthetic_records(40, seed=2) + [{}])
    ents = base[torch.randint(0, len(base), (700,), generator=g)]
    ids = torch.arange(700) * 7 + 3
    miner = TripletMiner(semi_hard_prob=0.5)
    draw = miner.draw(700, torch.Generator().manual_seed(9))
    whole = miner.mine_collection(ents, anchor_ids=ids, per_anchor=3, draw=draw)
    perm = torch.randperm(700, generator=g)
    shuffled = miner.mine_collection(ents[perm], anchor_ids=ids[perm], per_anchor=3,
                                     draw=type(draw)(draw.semi_hard[perm], draw.tie_seed))
    # candidate indices point into the shuffled set: map them back to the original positions
    back = torch.where(shuffled.positive >= 0, perm[shuffled.positive.clamp_min(0)], shuffled.positive)
    assert torch.equal(back, whole.positive[perm])
    back = torch.where(shuffled.negative >= 0, perm[shuffled.negative.clamp_min(0)], shuffled.negative)
    assert torch.equal(back, whole.negative[perm])
    for start in (0, 250, 500):
        sl = slice(start, start + 250)
        part = miner.mine_collection(ents[sl], ents, anchor_ids=ids[sl], candidate_ids=ids, per_anchor=3,
                                     draw=draw.rows(sl))
        assert torch.equal(part.positive, whole.positive[sl])
        assert torch.equal(part.negative, whole.negative[sl])


def test_random_ties_are_uniform_over_candidate_samples():
    """A record held by 500 studies is 500 times as likely as one held by one study when both tie
    at the top: across seeds, the positive lands in the big record about 500 / 501 of the time,
    as the unfolded miner's does (the same draws give the same choices)."""
    records = ([{"edema": {"adjs": ["mild"]}}] + [{"edema": {"adjs": ["mild"], "dirs": ["left"]}}] * 500
               + [{"edema": {"adjs": ["mild"], "dirs": ["right"]}}])
    ents = MetaEntities.from_records(records)
    miner = TripletMiner()
    trials, in_big = 3000, 0
    for seed in range(trials):
        draw = miner.draw(len(ents), torch.Generator().manual_seed(seed))
        got = miner.mine_collection(ents[:1], ents, anchor_ids=torch.tensor([0]),
                                    candidate_ids=torch.arange(len(ents)), draw=draw.rows(slice(0, 1)))
        unfolded = miner(ents[:1], ents, anchor_ids=torch.tensor([0]), candidate_ids=torch.arange(len(ents)),
                         draw=draw.rows(slice(0, 1)), fold=False)
        assert got.positive[0, 0] == unfolded.positive[0]
        in_big += 1 <= got.positive[0, 0].item() <= 500
    share = in_big / trials
    # binomial(3000, 500/501): sd 0.0011; 6 sd either side
    assert abs(share - 500 / 501) < 0.007, share


def test_never_n_by_n():
    """300,000 samples of a few dozen records: an N x N float matrix would take 360 GB."""
    base = MetaEntities.from_records(synthetic_records(30, seed=1) + [{}])
    ents = base[torch.randint(0, len(base), (300_000,), generator=torch.Generator().manual_seed(0))]
    miner = TripletMiner()
    got = miner.mine_collection(ents, per_anchor=2)
    assert got.positive.shape == (300_000, 2) and (got.positive[:, 0] >= 0).all()
    near = miner.neighbors(ents, k=5)
    assert (near.score[:, :-1] >= near.score[:, 1:]).all()   # best first


def test_unique():
    base = MetaEntities.from_records(synthetic_records(50, seed=3) + [{}])
    ents = base[torch.randint(0, len(base), (2000,), generator=torch.Generator().manual_seed(0))]
    distinct, inverse, counts = ents.unique()
    again = distinct[inverse]
    for a, b in zip((again.disease_bits, again.adjective_bits, again.direction_bits),
                    (ents.disease_bits, ents.adjective_bits, ents.direction_bits)):
        assert torch.equal(a, b)
    assert counts.sum() == 2000 and torch.equal(torch.bincount(inverse, minlength=len(distinct)), counts)
    assert len({tuple(r) for r in distinct.to_records() for r in [sorted(map(str, r.items()))]}) == len(distinct)
    # any order of the rows gives the same distinct records and counts
    perm = torch.randperm(2000, generator=torch.Generator().manual_seed(1))
    d2, inv2, c2 = ents[perm].unique()
    assert torch.equal(d2.adjective_bits, distinct.adjective_bits) and torch.equal(c2, counts)
    assert torch.equal(inv2, inverse[perm])
    empty = ents[torch.zeros(0, dtype=torch.int64)].unique()
    assert len(empty[0]) == 0 and empty[1].numel() == 0


def test_raw_op_refuses_a_bad_inverse():
    ents = MetaEntities.from_records([{"edema": {}}, {}])
    ids = torch.arange(2)
    args = [ents.disease_bits, ents.adjective_bits, ents.direction_bits, torch.tensor([0, 2]), ids,
            torch.ones(2, dtype=torch.bool), ents.disease_bits, ents.adjective_bits, ents.direction_bits,
            torch.tensor([0, 1]), ids, 0.85, 0.1, 0.05, 0.25, 0.6, 0.0, None, 1, True]
    with pytest.raises(RuntimeError, match="anchor_inverse must index the 2 distinct records"):
        torch.ops.medtrim.mine_folded(*args)


@cuda_only
def test_cuda_equals_reference():
    g = torch.Generator().manual_seed(0)
    base = MetaEntities.from_records(synthetic_records(60, seed=5) + [{}])
    ents = base[torch.randint(0, len(base), (900,), generator=g)]
    miner = TripletMiner()
    draw = miner.draw(900, torch.Generator().manual_seed(1))
    cpu = miner.mine_collection(ents, per_anchor=3, draw=draw)
    gpu = miner.mine_collection(ents.cuda(), per_anchor=3, draw=draw)
    assert gpu.positive.is_cuda and torch.equal(gpu.positive.cpu(), cpu.positive)
    assert torch.equal(gpu.negative.cpu(), cpu.negative)
    d_cpu, i_cpu, c_cpu = ents.unique()
    d_gpu, i_gpu, c_gpu = ents.cuda().unique()
    assert torch.equal(i_gpu.cpu(), i_cpu) and torch.equal(c_gpu.cpu(), c_cpu)


def test_large_cpu_calls_fold_by_default(monkeypatch):
    """TripletMiner.__call__ takes the folded path from FOLD_MIN_PAIRS pairs on (the same
    triplets, faster there), and fold= forces either path."""
    base = MetaEntities.from_records(synthetic_records(50, seed=6) + [{}])
    ents = base[torch.randint(0, len(base), (400,), generator=torch.Generator().manual_seed(0))]
    miner = TripletMiner(semi_hard_prob=0.5)
    draw = miner.draw(400, torch.Generator().manual_seed(3))
    calls = []
    real = torch.ops.medtrim.mine_folded

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr("medtrim_ext.ops.torch_ops.torch.ops.medtrim.mine_folded", counting, raising=False)
    unfolded = miner(ents, draw=draw)            # 160,000 pairs: below the threshold
    assert not calls
    monkeypatch.setattr(TripletMiner, "FOLD_MIN_PAIRS", 400 * 400)
    auto = miner(ents, draw=draw)
    assert calls and all(torch.equal(a, b) for a, b in zip(auto, unfolded))
    assert all(torch.equal(a, b) for a, b in zip(miner(ents, draw=draw, fold=False), unfolded))


@pytest.mark.parametrize("k, negatives", [(1, True), (3, False)])
def test_opcheck(k, negatives):
    """Schema, fake kernel and tracing of torch.ops.medtrim.mine_folded (inputs where every slot
    is filled: opcheck compares outputs without equal_nan)."""
    ents = MetaEntities.from_records(synthetic_records(60, seed=1) + [{}] * 5)
    distinct, inverse, _ = ents.unique()
    n, ids = len(ents), torch.arange(len(ents))
    bits = (distinct.disease_bits, distinct.adjective_bits, distinct.direction_bits)
    torch.library.opcheck(torch.ops.medtrim.mine_folded.default,
                          (*bits, inverse, ids, torch.ones(n, dtype=torch.bool), *bits, inverse, ids,
                           0.85, 0.1, 0.05, 0.0, 1.0, 0.0, torch.tensor([5]), k, negatives))
