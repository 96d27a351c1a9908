"""OfflineTripletSampler: pool mining as in the published MedTrim code."""

import itertools
import time

import pytest
import torch

from medtrim_ext import MetaEntities, TripletMiner
from medtrim_ext.mining.offline import OfflineBatch, OfflineTripletSampler
from medtrim_ext.entities.synthetic import synthetic_entities

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


# -- triplets mined once (the published generator), and their file --------------------------------
from medtrim_ext.mining.offline import (load_offline_triplets, mine_offline_triplets,  # noqa: E402
                                 offline_triplets_meta, save_offline_triplets)

STUDIES = [f"s{1000 + i}" for i in range(len(ENTS))]


def mined(**kw):
    kw.setdefault("num_triplets", 60)
    kw.setdefault("pool_size", 6)
    return mine_offline_triplets(kw.pop("entities", ENTS), kw.pop("miner", TripletMiner()), **kw)


def test_mined_once_triplets_follow_the_miner_and_are_seeded():
    miner = TripletMiner()
    t = mined(miner=miner, seed=5)
    assert t.shape == (60, 3) and t.dtype == torch.int64
    a, p, n = t.T
    assert torch.all((a != p) & (a != n) & (p != n))
    pos, neg = miner.pair_scores(ENTS, None, a, p), miner.pair_scores(ENTS, None, a, n)
    assert torch.all(pos >= neg) and torch.all(neg < miner.upper)
    assert torch.equal(t, mined(miner=miner, seed=5)) and not torch.equal(t, mined(miner=miner, seed=6))
    assert mined(num_triplets=57, seed=5).shape == (57, 3)  # the last set cut short
    assert torch.equal(mined(num_triplets=57, seed=5), t[:57])  # set k depends on (seed, k) only


def test_mined_once_pools_come_from_sets():
    """pool_size pools per set of set_size samples: each block of pool_size triplets (3 x 6 = 18
    indices) uses at most set_size = 12 distinct samples; without sets, about 17 of 300."""
    t = mined(set_size=12, num_triplets=120)
    blocks = t.reshape(20, 18)
    assert max(len(set(b.tolist())) for b in blocks) <= 12
    free = mined(num_triplets=120).reshape(20, 18)
    assert max(len(set(b.tolist())) for b in free) > 12
    with pytest.raises(ValueError, match="set_size=400 is larger than the 300 samples"):
        mined(set_size=400)
    with pytest.raises(ValueError, match="set_size=4 must be >= pool_size=6"):
        mined(set_size=4)
    with pytest.raises(ValueError, match="num_triplets"):
        mined(num_triplets=0)


def test_mined_triplets_file_roundtrip_and_checks(tmp_path):
    miner = TripletMiner()
    t = mined(miner=miner)
    meta = offline_triplets_meta(STUDIES, miner, num_triplets=60, pool_size=6, set_size=0, seed=0)
    path = save_offline_triplets(tmp_path / "triplets.csv", t, STUDIES, meta)
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# {") and lines[1] == ("anchor,positive,negative,anchor_study,"
                                                       "positive_study,negative_study")
    assert lines[2].split(",")[3] == STUDIES[int(t[0, 0])]
    assert torch.equal(load_offline_triplets(path, STUDIES, meta), t)

    other = offline_triplets_meta(STUDIES, TripletMiner(upper=0.5), num_triplets=60, pool_size=6,
                                  set_size=0, seed=0)
    with pytest.raises(ValueError, match=r"mined with upper=0.6 but this run has upper=0.5 \(settings"):
        load_offline_triplets(path, STUDIES, other)
    renamed = STUDIES[:-1] + ["s-other"]
    with pytest.raises(ValueError, match="study_ids_sha256.*the training data differ"):
        load_offline_triplets(path, renamed, offline_triplets_meta(renamed, miner, num_triplets=60,
                                                                   pool_size=6, set_size=0, seed=0))
    with pytest.raises(ValueError, match="num_samples=300 but this run has num_samples=299"):
        load_offline_triplets(path, STUDIES[:-1], offline_triplets_meta(
            STUDIES[:-1], miner, num_triplets=60, pool_size=6, set_size=0, seed=0))
    text = path.read_text().splitlines()
    row = text[5].split(",")
    row[4] = "s-wrong"
    path.write_text("\n".join(text[:5] + [",".join(row)] + text[6:]) + "\n")
    with pytest.raises(ValueError, match="row 3: positive_study 's-wrong' is not the study id"):
        load_offline_triplets(path, STUDIES, meta)
    path.write_text("anchor,positive\n1,2\n")
    with pytest.raises(ValueError, match="cannot be read"):
        load_offline_triplets(path, STUDIES, meta)
    with pytest.raises(ValueError, match="does not exist"):
        load_offline_triplets(tmp_path / "missing.csv", STUDIES, meta)


def test_triplets_file_escapes_study_ids_a_spreadsheet_would_run(tmp_path):
    # issue 24: ids like =HYPERLINK(...) were written as they are; escaped, they still round-trip
    studies = ["=HYPERLINK(\"http://x\")", "+1", "-7", "@SUM(A1)", "'quoted", "plain", "s6", "s7"]
    t = torch.tensor([[0, 1, 2], [3, 4, 5], [5, 0, 3]])
    from medtrim_ext.mining.offline import TRIPLETS_FORMAT

    meta = {"format": TRIPLETS_FORMAT, "num_triplets": 3}
    path = save_offline_triplets(tmp_path / "triplets.csv", t, studies, meta)
    cells = [line.split(",")[3:] for line in path.read_text().splitlines()[2:]]
    assert [c[0] for c in cells] == ['"\'=HYPERLINK(""http://x"")"', "'@SUM(A1)", "plain"]
    assert cells[0][1:] == ["'+1", "'-7"] and cells[1][1:] == ["'\'quoted", "plain"]
    assert [line.split(",")[:3] for line in path.read_text().splitlines()[2:]][0] == ["0", "1", "2"]
    assert torch.equal(load_offline_triplets(path, studies, meta), t)
