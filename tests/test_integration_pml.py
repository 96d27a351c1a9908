"""The pytorch-metric-learning miner against the real, pinned library: PML's TripletMarginLoss
trains with its triplets, which equal TripletMiner's; it composes with a reference set
(``ref_emb`` / ``ref_labels``) and with PML's CrossBatchMemory; bad labels raise naming them."""

from __future__ import annotations

import pytest
import torch

pml = pytest.importorskip("pytorch_metric_learning")

from pytorch_metric_learning.losses import CrossBatchMemory, TripletMarginLoss  # noqa: E402
from pytorch_metric_learning.miners import BaseMiner  # noqa: E402

from medtrim_ext import MetaEntities, TripletMiner  # noqa: E402
from medtrim_ext.entities.synthetic import synthetic_records  # noqa: E402
from medtrim_ext.integrations.pml import MedTrimMiner  # noqa: E402

N = 80


@pytest.fixture(scope="module")
def entities():
    return MetaEntities.from_records(synthetic_records(N, seed=7))


def triplets_of(t):
    """(a, p, n) of TripletMiner's full triplets, as PML's tuple."""
    t = t.only_valid()
    return t.anchor, t.positive, t.negative


def assert_same(got, want):
    assert len(got) == 3
    for g, w in zip(got, want):
        assert g.dtype == torch.int64
        assert torch.equal(g, w)


def test_is_a_pml_miner(entities):
    miner = MedTrimMiner(entities)
    assert isinstance(miner, BaseMiner)
    assert "80 samples" in repr(miner)


def test_trains_with_triplet_margin_loss_and_mines_what_triplet_miner_mines(entities):
    torch.manual_seed(0)
    features = torch.randn(N, 12)
    net = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss_fn = TripletMarginLoss(margin=0.2)
    miner = MedTrimMiner(entities, generator=torch.Generator().manual_seed(3))
    same_draws = torch.Generator().manual_seed(3)   # TripletMiner replays the miner's random choices
    order = torch.Generator().manual_seed(0)
    batch = torch.randperm(N, generator=order)[:24]   # one fixed batch: its loss must go down
    losses = []
    for step in range(8):
        idx = batch if step < 6 else torch.randperm(N, generator=order)[:24]
        emb = net(features[idx])
        indices_tuple = miner(emb, idx)
        want = TripletMiner()(entities[idx], anchor_ids=idx, generator=same_draws)
        assert_same(indices_tuple, triplets_of(want))
        assert miner.num_triplets == int(want.valid.sum()) > 0
        loss = loss_fn(emb, idx, indices_tuple=indices_tuple)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[5] < losses[0], losses   # same batch, same triplets (seeded): the loss fell
    assert all(p.grad is not None for p in net.parameters())


def test_a_sample_never_pairs_with_its_own_copy(entities):
    idx = torch.tensor([3, 3, 5, 9, 5, 12, 30, 31, 40, 3])
    emb = torch.randn(len(idx), 4)
    a, p, n = MedTrimMiner(entities, generator=torch.Generator().manual_seed(0))(emb, idx)
    assert len(a) > 0
    assert not (idx[a] == idx[p]).any() and not (idx[a] == idx[n]).any()
    # ids group dataset indices (one study, several images): the group never pairs either
    ids = torch.arange(N) // 2
    a, p, n = MedTrimMiner(entities, ids=ids, generator=torch.Generator().manual_seed(0))(emb, idx)
    assert not (ids[idx[a]] == ids[idx[p]]).any() and not (ids[idx[a]] == ids[idx[n]]).any()
    want = TripletMiner()(entities[idx], anchor_ids=ids[idx], generator=torch.Generator().manual_seed(0))
    assert_same((a, p, n), triplets_of(want))


def test_miner_settings_are_used(entities):
    idx = torch.arange(40)
    emb = torch.randn(40, 4)
    settings = TripletMiner(w_dis=0.5, w_adj=0.3, w_dir=0.2, threshold=0.1, upper=0.9, tie_break="first",
                            min_positive_score=0.5)
    got = MedTrimMiner(entities, miner=settings)(emb, idx)
    assert_same(got, triplets_of(settings(entities[idx], anchor_ids=idx)))
    assert len(got[0]) < 40   # min_positive_score leaves some anchors out


def test_reference_set_equals_triplet_miner_with_candidates(entities):
    idx, ref = torch.arange(0, 20), torch.arange(10, 70)   # overlapping: rows 10-19 are in both
    emb, ref_emb = torch.randn(20, 6), torch.randn(60, 6)
    a, p, n = MedTrimMiner(entities, generator=torch.Generator().manual_seed(1))(emb, idx, ref_emb, ref)
    want = TripletMiner()(entities[idx], entities[ref], anchor_ids=idx, candidate_ids=ref,
                          generator=torch.Generator().manual_seed(1))
    assert_same((a, p, n), triplets_of(want))
    assert int(p.max()) >= 20 and int(n.max()) >= 20   # they index the reference rows
    assert not (idx[a] == ref[p]).any() and not (idx[a] == ref[n]).any()
    # PML's loss takes the same reference set with these indices
    emb.requires_grad_(True)
    loss = TripletMarginLoss(margin=0.2)(emb, idx, (a, p, n), ref_emb, ref)
    loss.backward()
    assert torch.isfinite(loss) and emb.grad is not None


class RecordingMiner(MedTrimMiner):
    """Keeps what it returned and the reference labels it saw (CrossBatchMemory hides both)."""

    def mine(self, embeddings, labels, ref_emb, ref_labels):
        self.last = (super().mine(embeddings, labels, ref_emb, ref_labels), ref_labels.clone())
        return self.last[0]


def test_composes_with_cross_batch_memory(entities):
    torch.manual_seed(0)
    features = torch.randn(N, 12)
    net = torch.nn.Linear(12, 8)
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    miner = RecordingMiner(entities, generator=torch.Generator().manual_seed(5))
    same_draws = torch.Generator().manual_seed(5)
    memory = CrossBatchMemory(TripletMarginLoss(margin=0.2), embedding_size=8, memory_size=48,
                              miner=miner)
    for step in range(4):   # the fourth batch overwrites the first in the 48-row memory
        idx = torch.arange(step * 16, step * 16 + 16)
        emb = net(features[idx])
        loss = memory(emb, idx)
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        (a, p, n), ref = miner.last
        # the memory (this batch and the earlier ones, in queue order) was the reference set
        assert sorted(ref.tolist()) == list(range(max(0, step * 16 - 32), step * 16 + 16))
        want = TripletMiner()(entities[idx], entities[ref], anchor_ids=idx, candidate_ids=ref,
                              generator=same_draws)
        assert_same((a, p, n), triplets_of(want))
        assert len(a) > 0 and not (idx[a] == ref[p]).any()   # never the row just put in memory
        assert miner.num_triplets == len(a)


@pytest.mark.parametrize("call, match", [
    (lambda m, e: m(e, [0, 1, 2, 3]), "labels must be a torch.Tensor"),
    (lambda m, e: m(e, torch.tensor([0.0, 1, 2, 3])), "labels must be an integer tensor"),
    (lambda m, e: m(e, torch.tensor([0, 1, 2])), r"labels must have shape \(4,\)"),
    (lambda m, e: m(e, torch.tensor([0, 1, 2, N])), r"labels must be dataset indices in \[0, 80\)"),
    (lambda m, e: m(e, torch.tensor([0, -1, 2, 3])), "labels must be dataset indices"),
    (lambda m, e: m(e[0], torch.tensor([0])), "embeddings must be 2-D"),
    (lambda m, e: m(e, torch.arange(4), e), "pass ref_emb and ref_labels together"),
    (lambda m, e: m(e, torch.arange(4), e, torch.tensor([0, 1])), r"ref_labels must have shape \(4,\)"),
    (lambda m, e: m(e, torch.arange(4), e, torch.tensor([0, 1, 2, 99])), "ref_labels must be dataset indices"),
])
def test_bad_arguments_name_themselves(entities, call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call(MedTrimMiner(entities), torch.randn(4, 3))


def test_bad_construction(entities):
    with pytest.raises(TypeError, match="entities must be a MetaEntities"):
        MedTrimMiner([{}])
    with pytest.raises(ValueError, match=r"ids must have shape \(80,\)"):
        MedTrimMiner(entities, ids=torch.arange(3))
    with pytest.raises(TypeError, match="miner must be a TripletMiner"):
        MedTrimMiner(entities, miner="published")
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        MedTrimMiner(entities, generator=0)


def test_missing_library_names_the_extra(monkeypatch):
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "pytorch_metric_learning", None)   # as if not installed
    monkeypatch.delitem(sys.modules, "medtrim_ext.integrations.pml")
    with pytest.raises(ImportError, match=r'pip install "medtrim_ext\[pml\]"'):
        importlib.import_module("medtrim_ext.integrations.pml")
