"""The score-matrix kernel against the pure-PyTorch reference."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from medtrim_ext import MetaEntities, TripletMiner, Vocabulary, reference

from helpers import entity_sets, generic_vocabulary, random_entities, weights


def kernel_and_reference(anchors, candidates, w):
    miner = TripletMiner(*w)
    return (miner.score_matrix(anchors, candidates),
            reference.score_matrix(anchors, candidates, w_dis=w[0], w_adj=w[1], w_dir=w[2]))


@given(entity_sets(), weights)
def test_kernel_equals_reference_bit_for_bit(sets, w):
    anchors, candidates, _ = sets
    got, want = kernel_and_reference(anchors, candidates, w)
    m = len(anchors) if candidates is None else len(candidates)
    assert got.shape == (len(anchors), m) and got.dtype == torch.float32
    assert torch.equal(got, want)


@pytest.mark.parametrize("n,m", [(300, 257), (97, 400)])
def test_kernel_equals_reference_at_a_few_hundred(n, m):
    g = torch.Generator().manual_seed(n * m)
    vocab = Vocabulary.default()
    a = random_entities(n, vocab, p_disease=0.15, p_desc=0.05, generator=g)
    b = random_entities(m, vocab, p_disease=0.15, p_desc=0.05, generator=g)
    got, want = kernel_and_reference(a, b, (0.85, 0.10, 0.05))
    assert torch.equal(got, want)


def test_closed_form_values():
    recs = [{"pleural effusion": {"adjs": ["small"], "dirs": ["left"]}},
            {"pleural effusion": {"adjs": ["small", "large"], "dirs": ["left"]},
             "atelectasis": {}},
            {}, {}]
    ents = MetaEntities.from_records(recs)
    s = TripletMiner(w_dis=0.85, w_adj=0.10, w_dir=0.05).score_matrix(ents).double()
    # a=0 vs b=1: J = 1/2, adj IoU = 1/2, dir IoU = 1, |D_a| = 1
    assert s[0, 1].item() == pytest.approx(0.85 / 2 + 0.10 * 0.5 + 0.05 * 1.0, abs=1e-7)
    # a=1 vs b=0: J = 1/2, the descriptor sums are divided by |D_a| = 2
    assert s[1, 0].item() == pytest.approx(0.85 / 2 + (0.10 * 0.5 + 0.05 * 1.0) / 2, abs=1e-7)
    # self-score of a non-empty record is w_dis + w_adj + w_dir; two empty records score w_dis
    assert s[0, 0].item() == pytest.approx(1.0, abs=1e-7)
    assert s[2, 3].item() == pytest.approx(0.85, abs=1e-7)
    # an empty record and a non-empty one never match
    assert s[0, 2].item() == 0.0 and s[2, 0].item() == 0.0


def test_empty_sets_give_empty_matrices():
    vocab = generic_vocabulary(3, 4, 2)
    g = torch.Generator().manual_seed(0)
    a = random_entities(5, vocab, p_disease=0.5, p_desc=0.5, generator=g)
    miner = TripletMiner()
    assert miner.score_matrix(a, a[:0]).shape == (5, 0)
    assert miner.score_matrix(a[:0], a).shape == (0, 5)
    assert miner.score_matrix(a[:0]).shape == (0, 0)


def test_n_equals_one():
    ents = MetaEntities.from_records([{"edema": {"adjs": ["mild"]}}])
    assert TripletMiner().score_matrix(ents).tolist() == [[pytest.approx(1.0)]]


@given(st.integers(1, 12), weights)
def test_identical_records_all_score_the_self_score(n, w):
    rec = {"edema": {"adjs": ["mild"], "dirs": ["bilateral"]}, "cardiomegaly": {}}
    ents = MetaEntities.from_records([rec] * n)
    s = TripletMiner(*w).score_matrix(ents)
    assert torch.equal(s, torch.full_like(s, s[0, 0].item()))
    assert s[0, 0].item() == pytest.approx(w[0] + w[1] + w[2], rel=1e-6)


def test_descriptors_of_absent_diseases_are_ignored():
    vocab = generic_vocabulary(2, 3, 2)
    dis = torch.tensor([[True, False], [True, False]])
    adj = torch.zeros(2, 2, 3, dtype=torch.bool)
    adj[0, 1, 0] = True  # descriptor on a disease the sample does not have
    dirs = torch.zeros(2, 2, 2, dtype=torch.bool)
    ents = MetaEntities.from_masks(dis, adj, dirs, vocab)
    s = TripletMiner().score_matrix(ents)
    assert torch.equal(s, torch.full_like(s, s[0, 0].item()))
    assert ents.to_records()[0] == {"disease 0": {"adjs": [], "dirs": []}}


@given(entity_sets(), weights, st.integers(0, 2**31 - 1))
def test_pair_scores_equal_the_matrix_entries(sets, w, seed):
    anchors, candidates, _ = sets
    cands = anchors if candidates is None else candidates
    g = torch.Generator().manual_seed(seed)
    k = 50
    a_idx = torch.randint(-1, len(anchors), (k,), generator=g)
    b_idx = torch.randint(-1, len(cands), (k,), generator=g) if len(cands) else torch.full((k,), -1)
    miner = TripletMiner(*w)
    got = miner.pair_scores(anchors, candidates, a_idx, b_idx)
    full = reference.score_matrix(anchors, candidates, w_dis=w[0], w_adj=w[1], w_dir=w[2])
    missing = (a_idx < 0) | (b_idx < 0)
    assert torch.isnan(got[missing]).all()
    assert torch.equal(got[~missing], full[a_idx[~missing], b_idx[~missing]])


def test_triplet_scores():
    ents = MetaEntities.from_records([{"edema": {}}, {"edema": {}, "pneumonia": {}}, {}, {"fracture": {}}])
    miner = TripletMiner()
    t = miner(ents)
    pos, neg = miner.triplet_scores(ents, t)
    s = miner.score_matrix(ents)
    for a in range(4):
        assert pos[a].item() == s[a, t.positive[a]].item()
        if t.negative[a] >= 0:
            assert neg[a].item() == s[a, t.negative[a]].item()
        else:
            assert torch.isnan(neg[a])


def test_pair_scores_reject_out_of_range_indices():
    ents = MetaEntities.from_records([{"edema": {}}, {}])
    miner = TripletMiner()
    with pytest.raises(RuntimeError, match="candidate_index entries must be -1 or in"):
        miner.pair_scores(ents, None, torch.tensor([0]), torch.tensor([2]))
    with pytest.raises(RuntimeError, match="anchor_index entries must be -1 or in"):
        miner.pair_scores(ents, None, torch.tensor([-2]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"candidate_index must have shape \(1,\)"):
        miner.pair_scores(ents, None, torch.tensor([0]), torch.tensor([0, 1]))


@pytest.mark.parametrize("a,r,p_desc", [
    (48_000, 40, 0.3),     # 1,500 words per class: counts far above the quotient table's 128
    (48_000, 40, 0.001),   # the same layout with counts on both sides of the table's bound
    (200, 1, 0.2),         # run-time layout, counts up to 224
    (100, 40, 0.3),        # run-time layout (two direction words) the table still covers
])
def test_wide_vocabularies_equal_reference(a, r, p_desc):
    # The CPU kernels used to allocate a (32 W + 1)^2 table of quotients per call (W words per
    # class): 2.1 GB at W = 512, an int index overflow from W = 1449. The table is now bounded and
    # larger quotients are divided on the spot, with the same bits.
    g = torch.Generator().manual_seed(a + r)
    vocab = generic_vocabulary(3, a, r)
    anchors = random_entities(12, vocab, p_disease=0.7, p_desc=p_desc, generator=g)
    cands = random_entities(9, vocab, p_disease=0.7, p_desc=p_desc, generator=g)
    cands = MetaEntities.cat([cands, anchors[:3]])  # identical pairs: IoU 1 at large counts
    w = (0.85, 0.10, 0.05)
    got, want = kernel_and_reference(anchors, cands, w)
    assert torch.equal(got, want)
    assert len(set(want.flatten().tolist())) > 10  # the descriptor terms do vary
    miner = TripletMiner(*w)
    idx = torch.arange(len(anchors)).repeat_interleave(len(cands))
    cidx = torch.arange(len(cands)).repeat(len(anchors))
    assert torch.equal(miner.pair_scores(anchors, cands, idx, cidx), want.flatten())
    ids = torch.arange(len(anchors)), torch.arange(len(cands)) % len(anchors)
    for tie_break in ("first", "random"):
        m = TripletMiner(*w, threshold=0.3, upper=0.9, semi_hard_prob=0.5, tie_break=tie_break)
        d = m.draw(len(anchors), torch.Generator().manual_seed(1))
        t = m(anchors, cands, anchor_ids=ids[0], candidate_ids=ids[1], draw=d)
        r = reference.mine_triplets(anchors, cands, anchor_ids=ids[0], candidate_ids=ids[1],
                                    semi_hard=d.semi_hard, w_dis=w[0], w_adj=w[1], w_dir=w[2],
                                    threshold=0.3, upper=0.9, tie_seed=d.tie_seed)
        assert torch.equal(t.positive, r.positive) and torch.equal(t.negative, r.negative)
