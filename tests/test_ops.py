"""torch.library integration: opcheck, fake kernels and torch.compile."""

import pytest
import torch

import medtrim_ext
from medtrim_ext import TripletMiner, Vocabulary

from helpers import random_entities


@pytest.fixture
def sets():
    g = torch.Generator().manual_seed(5)
    vocab = Vocabulary.default()
    return (random_entities(20, vocab, p_disease=0.3, p_desc=0.1, generator=g),
            random_entities(13, vocab, p_disease=0.3, p_desc=0.1, generator=g))


def test_opcheck_score_matrix(sets):
    a, b = sets
    args = (a.disease_bits, a.adjective_bits, a.direction_bits,
            b.disease_bits, b.adjective_bits, b.direction_bits, 0.85, 0.1, 0.05)
    torch.library.opcheck(torch.ops.medtrim.score_matrix.default, args)


def test_opcheck_mine_triplets(sets):
    a, b = sets
    args = (a.disease_bits, a.adjective_bits, a.direction_bits, torch.arange(20),
            b.disease_bits, b.adjective_bits, b.direction_bits, torch.arange(13) + 10,
            torch.rand(20) < 0.5, 0.85, 0.1, 0.05, 0.25, 0.6)
    torch.library.opcheck(torch.ops.medtrim.mine_triplets.default, args)


def test_opcheck_pair_scores(sets):
    a, b = sets
    args = (a.disease_bits, a.adjective_bits, a.direction_bits,
            b.disease_bits, b.adjective_bits, b.direction_bits,
            torch.tensor([0, 5, 7, 19]), torch.tensor([12, 1, 3, 0]), 0.85, 0.1, 0.05)
    # (indices of -1 give NaN, which opcheck's output comparison treats as a mismatch)
    torch.library.opcheck(torch.ops.medtrim.pair_scores.default, args)


def test_raw_ops_refuse_meta_mixed_with_real_tensors(sets):
    # A meta argument sends the call to the fake kernel: it used to skip the device checks and
    # return uninitialised memory (values like 5.5e19) on the CPU, or meta results of CPU inputs.
    a, b = sets
    A = [a.disease_bits, a.adjective_bits, a.direction_bits]
    B = [b.disease_bits, b.adjective_bits, b.direction_bits]
    meta = lambda x: x.to("meta")  # noqa: E731
    w = (0.85, 0.1, 0.05)
    with pytest.raises(RuntimeError, match="candidate_dis is on meta but anchor_dis is on cpu"):
        torch.ops.medtrim.score_matrix(*A, meta(B[0]), *B[1:], *w)
    with pytest.raises(RuntimeError, match="anchor_dir is on meta but anchor_dis is on cpu"):
        torch.ops.medtrim.score_matrix(*A[:2], meta(A[2]), *B, *w)
    ids_a, ids_b, semi = torch.arange(20), torch.arange(13) + 10, torch.ones(20, dtype=torch.bool)
    with pytest.raises(RuntimeError, match="anchor_ids is on meta but anchor_dis is on cpu"):
        torch.ops.medtrim.mine_triplets(*A, meta(ids_a), *B, ids_b, semi, *w, 0.25, 0.6)
    with pytest.raises(RuntimeError, match="semi_hard is on meta"):
        torch.ops.medtrim.mine_triplets(*A, ids_a, *B, ids_b, meta(semi), *w, 0.25, 0.6)
    with pytest.raises(RuntimeError, match="tie_seed must be an int64 CPU tensor"):
        torch.ops.medtrim.mine_triplets(*map(meta, A), meta(ids_a), *map(meta, B), meta(ids_b),
                                        meta(semi), *w, 0.25, 0.6, meta(torch.tensor([1])))
    idx = torch.tensor([0, 5]), torch.tensor([1, 2])
    with pytest.raises(RuntimeError, match="candidate_index is on meta but anchor_dis is on cpu"):
        torch.ops.medtrim.pair_scores(*A, *B, idx[0], meta(idx[1]), *w)
    # all on meta: shapes only, as torch.compile needs (a CPU tie seed is fine, as for CUDA)
    pos, neg = torch.ops.medtrim.mine_triplets(*map(meta, A), meta(ids_a), *map(meta, B),
                                               meta(ids_b), meta(semi), *w, 0.25, 0.6,
                                               torch.tensor([1]))
    assert pos.device.type == neg.device.type == "meta" and pos.shape == (20,)
    assert torch.ops.medtrim.score_matrix(*map(meta, A), *map(meta, B), *w).shape == (20, 13)


def test_torch_compile_fullgraph(sets):
    a, b = sets
    miner = TripletMiner()

    def mine(dis, adj, dirs, ids):
        s = torch.ops.medtrim.score_matrix(dis, adj, dirs, dis, adj, dirs, 0.85, 0.1, 0.05)
        pos, neg = torch.ops.medtrim.mine_triplets(dis, adj, dirs, ids, dis, adj, dirs, ids,
                                                   torch.ones_like(ids, dtype=torch.bool),
                                                   0.85, 0.1, 0.05, 0.25, 0.6)
        return s.max(1).values, pos, neg

    compiled = torch.compile(mine, fullgraph=True, backend="aot_eager")
    ids = torch.arange(len(a))
    got = compiled(a.disease_bits, a.adjective_bits, a.direction_bits, ids)
    t = TripletMiner(tie_break="first")(a)  # the raw op without a tie seed
    assert torch.equal(got[1], t.positive) and torch.equal(got[2], t.negative)
    assert torch.equal(got[0], miner.score_matrix(a).max(1).values)
    # random ties: the seed is drawn inside the graph
    compiled_miner = torch.compile(lambda e: tuple(miner(e)), fullgraph=True, backend="aot_eager")
    torch.manual_seed(5)
    got = compiled_miner(a)
    torch.manual_seed(5)
    want = miner(a)
    assert all(torch.equal(x, y) for x, y in zip(got, want))


def test_build_info():
    info = medtrim_ext.build_info()
    assert "cpu" in info["backends"]
    assert info["torch_version"] == torch.__version__ == info["torch_runtime"]
    assert info["cuda_available"] == ("cuda" in info["backends"] and torch.cuda.is_available())


def test_torch_mismatch_gives_rebuild_message(monkeypatch):
    from medtrim_ext import _build_config, _loader

    monkeypatch.setattr(_build_config, "TORCH_VERSION", "0.0.1")
    with pytest.raises(ImportError, match=r"built against torch 0\.0\.1 .* Rebuild it"):
        _loader.load_extension()
