"""OfflineTripletSampler: pool mining as in the published MedTrim code."""

import itertools
import time

import pytest
import torch

from medtrim_ext import MetaEntities, TripletMiner
from medtrim_ext.offline import OfflineBatch, OfflineTripletSampler
from medtrim_ext.synthetic import synthetic_entities

ENTS = synthetic_entities(300, seed=4)


def sampler(**kw):
    kw.setdefault("triplets_per_batch", 8)
    return OfflineTripletSampler(kw.pop("entities", ENTS), kw.pop("miner", TripletMiner()), **kw)


def take(s, k):
    return list(itertools.islice(s, k))


def test_batch_layout_and_scores():
    miner = TripletMiner()
    s = sampler(triplets_per_batch=16, miner=miner)
    for out in take(s, 5):
        assert isinstance(out, OfflineBatch) and len(out.indices) == 48
        t = torch.arange(16)
        assert all(torch.equal(a, b) for a, b in zip(out.triplets, (t, t + 16, t + 32)))
        idx = torch.tensor(out.indices)
        a, p, n = idx[:16], idx[16:32], idx[32:]
        assert torch.all((a != p) & (a != n) & (p != n))  # distinct samples of one pool
        pos = miner.pair_scores(ENTS, None, a, p)
        neg = miner.pair_scores(ENTS, None, a, n)
        assert torch.all(pos >= neg) and torch.all(neg < miner.upper)
    assert s.step == 5


def test_deterministic_per_seed_and_batch_number():
    first = [b.indices for b in take(sampler(seed=3), 4)]
    assert first == [b.indices for b in take(sampler(seed=3), 4)]
    assert first != [b.indices for b in take(sampler(seed=4), 4)]
    assert len({tuple(x) for x in first}) == 4  # batches differ from each other
    s = sampler(seed=3)
    assert s.batch(2).indices == first[2] and s.step == 0  # random access does not move


def test_resume_gives_the_same_batches(tmp_path):
    s = sampler(seed=1, miner=TripletMiner(semi_hard_prob=0.5))
    take(s, 3)
    torch.save(s.state_dict(), tmp_path / "sampler.pt")
    expected = [b.indices for b in take(s, 3)]
    resumed = sampler(seed=1, miner=TripletMiner(semi_hard_prob=0.5))
    resumed.load_state_dict(torch.load(tmp_path / "sampler.pt", weights_only=True))
    assert resumed.step == 3
    assert [b.indices for b in take(resumed, 3)] == expected


def test_load_state_dict_checks():
    state = sampler(seed=1).state_dict()
    with pytest.raises(ValueError, match="seed=1"):
        sampler(seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="triplets_per_batch"):
        sampler(seed=1, triplets_per_batch=4).load_state_dict(state)
    with pytest.raises(ValueError, match="misses keys"):
        sampler().load_state_dict({"seed": 0})
    with pytest.raises(ValueError, match="step"):
        sampler(seed=1).load_state_dict(dict(state, step=-1))


def test_whole_dataset_pool_mines_like_the_miner():
    """With a pool as large as the data, each anchor's positive scores as high as its best match."""
    ents = synthetic_entities(20, seed=2)
    miner = TripletMiner()
    s = sampler(entities=ents, miner=miner, triplets_per_batch=10, pool_size=64)
    best = miner.score_matrix(ents)
    best.fill_diagonal_(-1)
    for out in take(s, 3):
        idx = torch.tensor(out.indices)
        a, p = idx[:10], idx[10:20]
        assert torch.equal(miner.pair_scores(ents, None, a, p), best[a].max(dim=1).values)


def test_few_samples_and_redraws():
    ents = MetaEntities.from_records([{}, {}, {"edema": {"adjs": [], "dirs": []}},
                                      {"pneumothorax": {"adjs": ["small"], "dirs": ["left"]}}])
    out = next(sampler(entities=ents, triplets_per_batch=6))
    assert len(out.indices) == 18  # pools of all 4 samples; anchors without a triplet are redrawn
    miner = TripletMiner()
    idx = torch.tensor(out.indices)
    assert torch.all(miner.pair_scores(ents, None, idx[:6], idx[6:12])
                     >= miner.pair_scores(ents, None, idx[:6], idx[12:]))


@pytest.mark.parametrize("records", [[{}] * 50, [{"edema": {"adjs": ["mild"], "dirs": []}}] * 5])
def test_no_triplets_is_a_clear_error(records):
    s = sampler(entities=MetaEntities.from_records(records), max_redraws=20)
    with pytest.raises(ValueError, match="no triplet in 20 random pools"):
        next(s)


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(entities=ENTS[slice(0, 2)]), ValueError, "at least 3 samples"),
    (dict(entities=ENTS[slice(0, 0)]), ValueError, "at least 3 samples"),
    (dict(pool_size=2), ValueError, "pool_size"),
    (dict(triplets_per_batch=0), ValueError, "triplets_per_batch"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(entities=[{}] * 5), TypeError, "MetaEntities"),
    (dict(miner="miner"), TypeError, "TripletMiner"),
])
def test_bad_arguments(kwargs, err, match):
    with pytest.raises(err, match=match):
        sampler(**kwargs)


def test_a_batch_of_64_is_fast():
    s = sampler(entities=synthetic_entities(5000, seed=1), triplets_per_batch=64)
    next(s)
    start = time.perf_counter()
    take(s, 5)
    per_batch = (time.perf_counter() - start) / 5
    assert per_batch < 0.25, f"{per_batch * 1e3:.1f} ms per batch of 64 triplets"
