"""Bad input gets a clear error naming the argument: never a crash, a hang or garbage."""

import math

import pytest
import torch

from medtrim_ext import MetaEntities, TripletMiner, Vocabulary

from helpers import generic_vocabulary, random_entities


@pytest.fixture
def ents():
    g = torch.Generator().manual_seed(0)
    return random_entities(6, Vocabulary.default(), p_disease=0.3, p_desc=0.1, generator=g)


@pytest.mark.parametrize("kwargs,match", [
    ({"w_dis": -0.1}, "w_dis must be >= 0"),
    ({"w_adj": math.nan}, "w_adj must be finite"),
    ({"w_dir": math.inf}, "w_dir must be finite"),
    ({"w_dis": 1e39}, "w_dis must fit in float32"),
    ({"threshold": 0.7, "upper": 0.6}, "threshold <= upper"),
    ({"threshold": -0.1}, "threshold <= upper"),
    ({"semi_hard_prob": 1.5}, "semi_hard_prob"),
    ({"upper": math.nan}, "upper must be finite"),
    ({"tie_break": "lowest"}, "tie_break must be one of"),
    ({"min_positive_score": -0.5}, "min_positive_score must be >= 0"),
    ({"min_positive_score": math.nan}, "min_positive_score must be finite"),
])
def test_miner_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TripletMiner(**kwargs)


def test_miner_argument_types():
    with pytest.raises(TypeError, match="w_dis must be a number"):
        TripletMiner(w_dis="0.85")
    with pytest.raises(TypeError, match="threshold must be a number"):
        TripletMiner(threshold=True)


def test_wrong_entity_types(ents):
    miner = TripletMiner()
    with pytest.raises(TypeError, match="anchors must be MetaEntities"):
        miner(torch.zeros(3))
    with pytest.raises(TypeError, match="candidates must be MetaEntities"):
        miner.score_matrix(ents, [{}])


def test_vocabulary_mismatch(ents):
    other = random_entities(4, generic_vocabulary(12, 98, 3), p_disease=0.3, p_desc=0.1,
                            generator=torch.Generator().manual_seed(1))
    with pytest.raises(ValueError, match="different vocabulary"):
        TripletMiner()(ents, other)


def test_ids(ents):
    miner = TripletMiner()
    bank = ents[:4]
    with pytest.raises(ValueError, match="both anchor_ids and candidate_ids"):
        miner(ents, bank, anchor_ids=torch.arange(6))
    with pytest.raises(ValueError, match=r"candidate_ids must have shape \(4,\)"):
        miner(ents, bank, anchor_ids=torch.arange(6), candidate_ids=torch.arange(5))
    with pytest.raises(TypeError, match="anchor_ids must be an integer tensor"):
        miner(ents, bank, anchor_ids=torch.zeros(6), candidate_ids=torch.arange(4))
    with pytest.raises(TypeError, match="anchor_ids must be a torch.Tensor"):
        miner(ents, bank, anchor_ids=list(range(6)), candidate_ids=torch.arange(4))
    with pytest.raises(ValueError, match="anchor_ids is on meta"):
        miner(ents, bank, anchor_ids=torch.arange(6, device="meta"), candidate_ids=torch.arange(4))
    with pytest.raises(ValueError, match="candidate_ids needs candidates"):
        miner(ents, candidate_ids=torch.arange(6))


def test_generator_type(ents):
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        TripletMiner(semi_hard_prob=0.5)(ents, generator=123)


def test_unknown_names_are_named():
    with pytest.raises(ValueError, match=r"records\[1\]: unknown disease 'pneumonitis-x'"):
        MetaEntities.from_records([{}, {"pneumonitis-x": {}}])
    with pytest.raises(ValueError, match="unknown adjective 'gigantic'"):
        MetaEntities.from_records([{"edema": {"adjs": ["gigantic"]}}])
    with pytest.raises(ValueError, match="unknown direction 'upper abdomen'"):
        MetaEntities.from_records([{"edema": {"dirs": ["upper abdomen"]}}])


@pytest.mark.parametrize("records,error,match", [
    ("edema", TypeError, "sequence of dicts"),
    ([["edema"]], TypeError, r"records\[0\] must be a dict"),
    ([{"edema": "mild"}], TypeError, "must be a dict with 'adjs'/'dirs'"),
    ([{"edema": {"adjs": "mild"}}], TypeError, "'adjs' must be a list"),
    ([{"edema": {"adj": ["mild"]}}], ValueError, "unexpected keys"),
    ([{"edema": {}, "no finding": {}}], ValueError, "'no finding' together with"),
    ([{None: {}}], ValueError, "disease names must be strings"),
])
def test_malformed_records(records, error, match):
    with pytest.raises(error, match=match):
        MetaEntities.from_records(records)


def test_from_masks_validation():
    c, a, r = Vocabulary.default().sizes
    ok = (torch.zeros(2, c, dtype=torch.bool), torch.zeros(2, c, a, dtype=torch.bool),
          torch.zeros(2, c, r, dtype=torch.bool))
    with pytest.raises(TypeError, match="diseases must be a bool tensor"):
        MetaEntities.from_masks(ok[0].int(), ok[1], ok[2])
    with pytest.raises(ValueError, match="adjectives has 5 columns"):
        MetaEntities.from_masks(ok[0], torch.zeros(2, c, 5, dtype=torch.bool), ok[2])
    with pytest.raises(ValueError, match="directions must be 3-D"):
        MetaEntities.from_masks(ok[0], ok[1], torch.zeros(2, c, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"adjectives must have shape \(2, 12, \.\.\.\)"):
        MetaEntities.from_masks(ok[0], torch.zeros(3, c, a, dtype=torch.bool), ok[2])
    with pytest.raises(TypeError, match="directions must be a torch.Tensor"):
        MetaEntities.from_masks(ok[0], ok[1], [[0]])


def test_vocabulary_validation(tmp_path):
    with pytest.raises(ValueError, match="duplicate entries"):
        Vocabulary(("a", "A"), ("x",), ("l",))
    with pytest.raises(ValueError, match="must not list 'no finding'"):
        Vocabulary(("no finding",), ("x",), ("l",))
    with pytest.raises(ValueError, match="between 1 and 32"):
        Vocabulary(tuple(f"d{i}" for i in range(33)), ("x",), ("l",))
    with pytest.raises(ValueError, match="maps to 'nothing'"):
        Vocabulary(("a",), ("x",), ("l",), disease_synonyms={"b": "nothing"})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Vocabulary.from_file(bad)
    bad.write_text('{"diseases": ["a"], "adjectives": ["x"]}')
    with pytest.raises(ValueError, match=r"missing required keys \['directions'\]"):
        Vocabulary.from_file(bad)
    with pytest.raises(ValueError, match="cannot read vocabulary file"):
        Vocabulary.from_file(tmp_path / "missing.json")


# -- the raw ops check their inputs too ------------------------------------------------------------

def raw_args(ents):
    return [ents.disease_bits, ents.adjective_bits, ents.direction_bits]


def test_raw_score_op_rejects_bad_tensors(ents):
    op = torch.ops.medtrim.score_matrix
    a = raw_args(ents)
    with pytest.raises(RuntimeError, match="anchor_dis must be int32"):
        op(a[0].long(), a[1], a[2], *a, 0.85, 0.1, 0.05)
    with pytest.raises(RuntimeError, match="candidate_adj must be 3-D"):
        op(*a, a[0], a[1][:, :, 0], a[2], 0.85, 0.1, 0.05)
    with pytest.raises(RuntimeError, match="disagree on N"):
        op(a[0][:3], a[1], a[2], *a, 0.85, 0.1, 0.05)
    with pytest.raises(RuntimeError, match="same vocabulary layout"):
        op(*a, a[0], a[1][:, :6], a[2][:, :6], 0.85, 0.1, 0.05)
    with pytest.raises(RuntimeError, match="w_adj must be finite and >= 0"):
        op(*a, *a, 0.85, float("nan"), 0.05)
    with pytest.raises(RuntimeError, match="number of disease classes"):
        z = torch.zeros(6, 33, 1, dtype=torch.int32)
        op(a[0], z, z, a[0], z, z, 0.85, 0.1, 0.05)
    with pytest.raises(RuntimeError, match="at most 1048576 words per class"):
        wide = torch.zeros(1, 1, (1 << 20) + 1, dtype=torch.int32)  # counts could overflow int
        one, dirs = torch.zeros(1, dtype=torch.int32), torch.zeros(1, 1, 1, dtype=torch.int32)
        op(one, wide, dirs, one, wide, dirs, 0.85, 0.1, 0.05)


def test_raw_mining_op_rejects_bad_tensors(ents):
    op = torch.ops.medtrim.mine_triplets
    a = raw_args(ents)
    ids = torch.arange(6)
    semi = torch.ones(6, dtype=torch.bool)
    with pytest.raises(RuntimeError, match="anchor_ids and candidate_ids must be int64"):
        op(*a, ids.int(), *a, ids, semi, 0.85, 0.1, 0.05, 0.25, 0.6)
    with pytest.raises(RuntimeError, match="semi_hard must be a bool tensor"):
        op(*a, ids, *a, ids, semi.int(), 0.85, 0.1, 0.05, 0.25, 0.6)
    with pytest.raises(RuntimeError, match="threshold <= upper"):
        op(*a, ids, *a, ids, semi, 0.85, 0.1, 0.05, 0.7, 0.6)
    for bad in (torch.tensor([1.0]), torch.tensor([1, 2]), torch.tensor([1], dtype=torch.int32)):
        with pytest.raises(RuntimeError, match="tie_seed must be an int64 CPU tensor with one element"):
            op(*a, ids, *a, ids, semi, 0.85, 0.1, 0.05, 0.25, 0.6, bad)


def test_mining_draw_must_fit(ents):
    miner = TripletMiner()
    with pytest.raises(TypeError, match="draw must be a MiningDraw"):
        miner(ents, draw=(torch.ones(6, dtype=torch.bool), None))
    with pytest.raises(ValueError, match=r"draw.semi_hard must be a bool tensor of shape \(6,\)"):
        miner(ents, draw=miner.draw(5))
    with pytest.raises(ValueError, match="this miner breaks ties 'random'"):
        miner(ents, draw=TripletMiner(tie_break="first").draw(6))


def test_stray_disease_bits_are_ignored_not_read_out_of_bounds():
    vocab = generic_vocabulary(3, 2, 2)
    ents = MetaEntities.from_records([{"disease 0": {}}, {"disease 0": {}}], vocabulary=vocab)
    dis = ents.disease_bits | torch.tensor([1 << 20, -(1 << 31)], dtype=torch.int32)
    s = torch.ops.medtrim.score_matrix(dis, ents.adjective_bits, ents.direction_bits,
                                       dis, ents.adjective_bits, ents.direction_bits, 0.85, 0.1, 0.05)
    assert torch.allclose(s, torch.ones(2, 2))


def test_bits_beyond_the_vocabulary_are_rejected():
    # Built directly, entities with a padding bit set scored differently from the reference
    # (the kernels count every bit of a word, the vocabulary names only its first width % 32).
    vocab = generic_vocabulary(3, 40, 2)
    ents = MetaEntities.from_records([{"disease 0": {"adjs": ["adj 1"]}}] * 2, vocabulary=vocab)
    MetaEntities(ents.disease_bits, ents.adjective_bits, ents.direction_bits, vocab)  # clean: fine
    adj = ents.adjective_bits.clone()
    adj[1, 0, 1] |= 1 << 13  # adjective 45 of a 40-adjective vocabulary
    with pytest.raises(ValueError, match=r"adjective_bits \(sample 1, class 0\) has bits set beyond "
                                         r"the vocabulary's 40 adjectives"):
        MetaEntities(ents.disease_bits, adj, ents.direction_bits, vocab)
    dirs = ents.direction_bits.clone()
    dirs[0, 2, 0] = -(1 << 31)
    with pytest.raises(ValueError, match=r"direction_bits \(sample 0, class 2\) .* 2 directions"):
        MetaEntities(ents.disease_bits, ents.adjective_bits, dirs, vocab)
    dis = ents.disease_bits | (1 << 3)
    with pytest.raises(ValueError, match=r"disease_bits \(sample 0\) .* 3 disease classes"):
        MetaEntities(dis, ents.adjective_bits, ents.direction_bits, vocab)
    # a memory bank restored from a state with such bits refuses it too
    from medtrim_ext import MemoryBank

    bank = MemoryBank(4, 2, vocab)
    bank.push(torch.randn(2, 2), torch.randn(2, 2), ents, torch.arange(2))
    state = bank.state_dict()
    stray = state["adjective_bits"].clone()   # the bank's buffers hold all its `size` rows
    stray[1, 0, 1] |= 1 << 13
    state["adjective_bits"] = stray
    with pytest.raises(ValueError, match="memory bank state: adjective_bits"):
        MemoryBank(4, 2, vocab).load_state_dict(state)
    # widths that fill their words have no padding: every bit is a name
    full = generic_vocabulary(32, 64, 32)
    c, a, r = full.sizes
    m = MetaEntities(torch.full((1,), -1, dtype=torch.int32), torch.full((1, c, 2), -1, dtype=torch.int32),
                     torch.full((1, c, 1), -1, dtype=torch.int32), full)
    assert m.masks()[1].all()
