"""The fused mining kernel against the reference, and the mining rules on hand-made cases."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from medtrim_ext import MetaEntities, TripletMiner, Vocabulary, reference

from helpers import entity_sets, random_entities, weights

thresholds = st.tuples(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.85]),
                       st.sampled_from([0.0, 0.3, 0.6, 0.85, 1.0, 5.0])).filter(lambda t: t[0] <= t[1])


tie_breaks = st.sampled_from(["random", "first"])


def check_against_reference(anchors, candidates, miner, anchor_ids=None, candidate_ids=None, seed=0):
    got = miner(anchors, candidates, anchor_ids=anchor_ids, candidate_ids=candidate_ids,
                generator=torch.Generator().manual_seed(seed))
    semi, tie_seed = miner.draw(len(anchors), torch.Generator().manual_seed(seed))
    assert (tie_seed is None) == (miner.tie_break == "first")
    want = reference.mine_triplets(anchors, candidates, anchor_ids=anchor_ids,
                                   candidate_ids=candidate_ids, semi_hard=semi, tie_seed=tie_seed,
                                   **miner.weights, threshold=miner.threshold, upper=miner.upper,
                                   min_positive_score=miner.min_positive_score)
    for name, g, w in zip(("anchor", "positive", "negative"), got, want):
        assert g.dtype == torch.int64, name
        assert torch.equal(g, w), f"{name}: kernel {g.tolist()} != reference {w.tolist()}"
    return got


@given(entity_sets(), weights, thresholds, st.sampled_from([0.0, 0.3, 1.0]), st.integers(0, 2**31 - 1),
       tie_breaks, st.sampled_from([0.0, 0.0, 0.5, 0.9]))
def test_fused_mining_equals_reference(sets, w, thr_up, prob, seed, tie_break, min_positive):
    anchors, candidates, _ = sets
    miner = TripletMiner(*w, threshold=thr_up[0], upper=thr_up[1], semi_hard_prob=prob,
                         tie_break=tie_break, min_positive_score=min_positive)
    check_against_reference(anchors, candidates, miner, seed=seed)


@given(entity_sets(), st.integers(1, 5), st.integers(0, 2**31 - 1), tie_breaks)
def test_equal_ids_never_pair(sets, groups, seed, tie_break):
    anchors, candidates, _ = sets
    g = torch.Generator().manual_seed(seed)
    cands = anchors if candidates is None else candidates
    a_ids = torch.randint(groups, (len(anchors),), generator=g)
    c_ids = torch.randint(groups, (len(cands),), generator=g)
    miner = TripletMiner(semi_hard_prob=0.5, tie_break=tie_break)
    t = check_against_reference(anchors, cands, miner, a_ids, c_ids, seed)
    for a, p, n in zip(*t):
        if p >= 0:
            assert a_ids[a] != c_ids[p]
        if n >= 0:
            assert a_ids[a] != c_ids[n] and n != p


@pytest.mark.parametrize("n", [200, 333])
def test_fused_mining_a_few_hundred(n):
    g = torch.Generator().manual_seed(n)
    vocab = Vocabulary.default()
    ents = random_entities(n, vocab, p_disease=0.12, p_desc=0.05, generator=g)
    bank = random_entities(n + 50, vocab, p_disease=0.12, p_desc=0.05, generator=g)
    for tie_break in ("random", "first"):
        check_against_reference(ents, None, TripletMiner(semi_hard_prob=0.5, tie_break=tie_break), seed=n)
        check_against_reference(ents, bank, TripletMiner(threshold=0.1, upper=0.9, tie_break=tie_break),
                                seed=n)


def test_mining_equals_mining_the_score_matrix():
    g = torch.Generator().manual_seed(3)
    ents = random_entities(150, Vocabulary.default(), p_disease=0.2, p_desc=0.1, generator=g)
    miner = TripletMiner(semi_hard_prob=0.7)
    t = miner(ents, generator=torch.Generator().manual_seed(1))
    ids = torch.arange(150)
    semi, tie_seed = miner.draw(150, torch.Generator().manual_seed(1))
    pos, neg = reference.mine_from_scores(miner.score_matrix(ents), ids, ids, semi,
                                          threshold=miner.threshold, upper=miner.upper, tie_seed=tie_seed)
    assert torch.equal(t.positive, pos) and torch.equal(t.negative, neg)


# -- hand-made cases -----------------------------------------------------------------------------

def records(*recs):
    return MetaEntities.from_records(list(recs))


def test_single_sample_has_no_triplet():
    t = TripletMiner()(records({"edema": {}}))
    assert t.positive.tolist() == [-1] and t.negative.tolist() == [-1]
    assert t.valid.tolist() == [False]
    assert len(t.only_valid().anchor) == 0


def test_no_candidate_below_upper_gives_no_negative():
    t = TripletMiner(tie_break="first")(records({}, {}, {}))  # every pair scores 0.85 >= upper
    assert t.positive.tolist() == [1, 0, 0]
    assert t.negative.tolist() == [-1, -1, -1]


def test_empty_candidate_set():
    ents = records({"edema": {}}, {})
    t = TripletMiner()(ents, ents[:0])
    assert t.positive.tolist() == [-1, -1] and t.negative.tolist() == [-1, -1]


def test_first_ties_go_to_the_lowest_index():
    same = {"edema": {"adjs": ["mild"]}}
    other = {"cardiomegaly": {}}
    t = TripletMiner(threshold=0.0, tie_break="first")(records(same, other, same, other, same))
    assert t.positive.tolist()[0] == 2  # samples 2 and 4 tie for anchor 0
    assert t.positive.tolist()[2] == 0
    assert t.negative.tolist()[0] == 1  # samples 1 and 3 tie at score 0


def test_semi_hard_prefers_lowest_score_above_threshold():
    anchor = {"edema": {}, "atelectasis": {}}
    ents = records(anchor,
                   {"edema": {}, "atelectasis": {}},      # positive (1.0)
                   {"edema": {}},                         # J=1/2: 0.425 + 0.15/2 = 0.5
                   {"edema": {}, "pneumonia": {}},        # J=1/3: 0.283 + 0.075 = 0.358
                   {"fracture": {}})                      # 0
    t = TripletMiner(threshold=0.25, upper=0.6)(ents[0:1], ents,
                                                anchor_ids=torch.tensor([0]), candidate_ids=torch.arange(5))
    assert (t.positive.item(), t.negative.item()) == (1, 3)
    hard = TripletMiner(threshold=0.25, upper=0.6, semi_hard_prob=0.0)(
        ents[0:1], ents, anchor_ids=torch.tensor([0]), candidate_ids=torch.arange(5))
    assert hard.negative.item() == 4


def test_semi_hard_falls_back_to_highest_kept():
    ents = records({"edema": {}}, {"edema": {}}, {"edema": {}, "pneumonia": {}, "fracture": {}},
                   {"fracture": {}})
    # anchor 0: scores 1.0 (1), 0.85/3 + 0.15 = 0.433 (2), 0 (3); threshold 0.5 leaves no semi-hard
    t = TripletMiner(threshold=0.5, upper=0.6)(ents)  # no ties: the same under either rule
    assert (t.positive[0].item(), t.negative[0].item()) == (1, 2)


def test_generator_makes_hard_choices_reproducible():
    g = torch.Generator().manual_seed(0)
    ents = random_entities(64, Vocabulary.default(), p_disease=0.2, p_desc=0.1, generator=g)
    miner = TripletMiner(semi_hard_prob=0.5)
    a = miner(ents, generator=torch.Generator().manual_seed(7))
    b = miner(ents, generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    torch.manual_seed(7)
    c = miner(ents)  # default generator
    torch.manual_seed(7)
    d = miner(ents)
    assert all(torch.equal(x, y) for x, y in zip(c, d))


# -- random tie-breaking -------------------------------------------------------------------------

def tie_heavy(n, generator, distinct=3, pool_of=None):
    """n samples drawn from ``distinct`` records: nearly every score ties with many others."""
    return random_entities(n, Vocabulary.default(), p_disease=0.15, p_desc=0.1, generator=generator,
                           pool=distinct)


@given(st.integers(1, 120), st.integers(1, 6), st.integers(0, 2**31 - 1),
       st.sampled_from([0.0, 0.5, 1.0]), st.booleans())
def test_random_ties_equal_reference_on_tie_heavy_pools(n, distinct, seed, prob, bank):
    g = torch.Generator().manual_seed(seed)
    ents = tie_heavy(n, g, distinct)
    miner = TripletMiner(semi_hard_prob=prob, threshold=0.0 if seed % 2 else 0.25)
    if bank:
        cands = tie_heavy(int(torch.randint(0, 150, (1,), generator=g)), g, distinct)
        ids = torch.randint(0, 40, (n,), generator=g)
        cand_ids = torch.randint(0, 40, (len(cands),), generator=g)
        check_against_reference(ents, cands, miner, ids, cand_ids, seed)
    else:
        check_against_reference(ents, None, miner, seed=seed)


def test_random_ties_do_not_depend_on_batch_order_or_threads():
    """The key is a hash of (seed, ids): permuting the batch (ids travel with the samples) or
    changing the thread count picks the same samples."""
    g = torch.Generator().manual_seed(5)
    ents = tie_heavy(300, g, distinct=4)
    ids = torch.randperm(10_000, generator=g)[:300]
    miner = TripletMiner(semi_hard_prob=0.5)
    perm = torch.randperm(300, generator=g)
    # the semi-hard draw is per position: give the permuted batch the permuted draw
    semi, tie_seed = miner.draw(300, torch.Generator().manual_seed(11))
    base = reference.mine_triplets(ents, anchor_ids=ids, semi_hard=semi, tie_seed=tie_seed)
    ops_out = torch.ops.medtrim.mine_triplets(
        ents.disease_bits[perm], ents.adjective_bits[perm], ents.direction_bits[perm], ids[perm],
        ents.disease_bits[perm], ents.adjective_bits[perm], ents.direction_bits[perm], ids[perm],
        semi[perm], 0.85, 0.10, 0.05, 0.25, 0.6, tie_seed)
    assert tie_seed.dtype == torch.int64 and tie_seed.numel() == 1
    assert torch.equal(ids[perm][ops_out[0]], ids[base.positive[perm]])
    assert torch.equal(ids[perm][ops_out[1]], ids[base.negative[perm]])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = miner(ents, anchor_ids=ids, generator=torch.Generator().manual_seed(11))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(single.positive, base.positive) and torch.equal(single.negative, base.negative)


def test_identical_normals_take_distinct_positives():
    """Anchors that tie with each other take different samples (a permutation), where the
    lowest-index rule sends every anchor to sample 0 or 1."""
    ents = records(*([{}] * 64))
    miner = TripletMiner(upper=1.0, threshold=0.0)
    for seed in range(5):
        t = miner(ents, generator=torch.Generator().manual_seed(seed))
        assert len(set(t.positive.tolist())) >= 63
        assert (t.positive != t.anchor).all() and (t.negative != t.positive).all()
    first = TripletMiner(upper=1.0, threshold=0.0, tie_break="first")(ents)
    assert set(first.positive.tolist()) == {0, 1}


def test_each_tied_candidate_is_chosen_equally_often_across_seeds():
    # anchor 0 ties with samples 1-7 at score 1 (positive) and with 8-10 at score 0 (negative)
    ents = records(*([{"edema": {}}] * 8 + [{}] * 3))
    miner = TripletMiner()
    seeds = 4000
    pos = torch.zeros(11)
    neg = torch.zeros(11)
    for seed in range(seeds):
        t = miner(ents[0:1], ents, anchor_ids=torch.tensor([0]), candidate_ids=torch.arange(11),
                  generator=torch.Generator().manual_seed(seed))
        pos[t.positive[0]] += 1
        neg[t.negative[0]] += 1
    assert pos[[0, 8, 9, 10]].sum() == 0 and neg[:8].sum() == 0
    # binomial spread: 7 candidates of p = 1/7 over 4000 draws (sd ~ 22), 3 of p = 1/3 (sd ~ 30)
    assert ((pos[1:8] - seeds / 7).abs() < 5 * 22).all(), pos.tolist()
    assert ((neg[8:] - seeds / 3).abs() < 5 * 30).all(), neg.tolist()
    # a chi-square test at the 0.1% level (6 and 2 degrees of freedom)
    chi_pos = (((pos[1:8] - seeds / 7) ** 2) / (seeds / 7)).sum()
    chi_neg = (((neg[8:] - seeds / 3) ** 2) / (seeds / 3)).sum()
    assert chi_pos < 22.46 and chi_neg < 13.82, (chi_pos, chi_neg)


def test_tie_seed_comes_from_the_generator():
    ents = tie_heavy(64, torch.Generator().manual_seed(0))
    miner = TripletMiner()
    a = miner(ents, generator=torch.Generator().manual_seed(3))
    b = miner(ents, generator=torch.Generator().manual_seed(3))
    c = miner(ents, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a.positive, b.positive) and torch.equal(a.negative, b.negative)
    assert not torch.equal(a.positive, c.positive)
    assert torch.equal(miner.draw(4, torch.Generator().manual_seed(3)).tie_seed,
                       miner.draw(4, torch.Generator().manual_seed(3)).tie_seed)
    assert TripletMiner(tie_break="first").draw(4).tie_seed is None


def test_min_positive_score_drops_weak_positives():
    # anchor 0 (edema) shares nothing with anyone: its best candidate scores 0
    ents = records({"edema": {}}, {"fracture": {}}, {"fracture": {}}, {})
    t = TripletMiner(min_positive_score=0.5)(ents, generator=torch.Generator().manual_seed(0))
    assert t.positive.tolist()[0] == -1 and t.negative.tolist()[0] == -1
    assert t.positive.tolist()[1] == 2  # fracture pairs with fracture (score 1)
    assert TripletMiner()(ents).positive.tolist()[0] >= 0
