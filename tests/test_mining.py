"""The fused mining kernel against the reference, and the mining rules on hand-made cases."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from medtrim_ext import MetaEntities, TripletMiner, Vocabulary, reference

from helpers import entity_sets, random_entities, weights

thresholds = st.tuples(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.85]),
                       st.sampled_from([0.0, 0.3, 0.6, 0.85, 1.0, 5.0])).filter(lambda t: t[0] <= t[1])


def check_against_reference(anchors, candidates, miner, anchor_ids=None, candidate_ids=None, seed=0):
    got = miner(anchors, candidates, anchor_ids=anchor_ids, candidate_ids=candidate_ids,
                generator=torch.Generator().manual_seed(seed))
    semi = miner.semi_hard_mask(len(anchors), torch.Generator().manual_seed(seed))
    want = reference.mine_triplets(anchors, candidates, anchor_ids=anchor_ids,
                                   candidate_ids=candidate_ids, semi_hard=semi, **miner.weights,
                                   threshold=miner.threshold, upper=miner.upper)
    for name, g, w in zip(("anchor", "positive", "negative"), got, want):
        assert g.dtype == torch.int64, name
        assert torch.equal(g, w), f"{name}: kernel {g.tolist()} != reference {w.tolist()}"
    return got


@given(entity_sets(), weights, thresholds, st.sampled_from([0.0, 0.3, 1.0]), st.integers(0, 2**31 - 1))
def test_fused_mining_equals_reference(sets, w, thr_up, prob, seed):
    anchors, candidates, _ = sets
    miner = TripletMiner(*w, threshold=thr_up[0], upper=thr_up[1], semi_hard_prob=prob)
    check_against_reference(anchors, candidates, miner, seed=seed)


@given(entity_sets(), st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_equal_ids_never_pair(sets, groups, seed):
    anchors, candidates, _ = sets
    g = torch.Generator().manual_seed(seed)
    cands = anchors if candidates is None else candidates
    a_ids = torch.randint(groups, (len(anchors),), generator=g)
    c_ids = torch.randint(groups, (len(cands),), generator=g)
    miner = TripletMiner(semi_hard_prob=0.5)
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
    check_against_reference(ents, None, TripletMiner(semi_hard_prob=0.5), seed=n)
    check_against_reference(ents, bank, TripletMiner(threshold=0.1, upper=0.9), seed=n)


def test_mining_equals_mining_the_score_matrix():
    g = torch.Generator().manual_seed(3)
    ents = random_entities(150, Vocabulary.default(), p_disease=0.2, p_desc=0.1, generator=g)
    miner = TripletMiner(semi_hard_prob=0.7)
    t = miner(ents, generator=torch.Generator().manual_seed(1))
    ids = torch.arange(150)
    pos, neg = reference.mine_from_scores(miner.score_matrix(ents), ids, ids,
                                          miner.semi_hard_mask(150, torch.Generator().manual_seed(1)),
                                          threshold=miner.threshold, upper=miner.upper)
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
    t = TripletMiner()(records({}, {}, {}))  # every pair scores 0.85 >= upper
    assert t.positive.tolist() == [1, 0, 0]
    assert t.negative.tolist() == [-1, -1, -1]


def test_empty_candidate_set():
    ents = records({"edema": {}}, {})
    t = TripletMiner()(ents, ents[:0])
    assert t.positive.tolist() == [-1, -1] and t.negative.tolist() == [-1, -1]


def test_ties_go_to_the_lowest_index():
    same = {"edema": {"adjs": ["mild"]}}
    other = {"cardiomegaly": {}}
    t = TripletMiner(threshold=0.0)(records(same, other, same, other, same))
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
    t = TripletMiner(threshold=0.5, upper=0.6)(ents)
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
