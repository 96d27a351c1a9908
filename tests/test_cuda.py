"""CUDA kernels: identical to the CPU kernels and the reference. Skipped without a CUDA device."""

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medtrim_ext import MetaEntities, TripletMiner, Vocabulary, build_info, reference

from helpers import cuda_only, entity_sets, golden_cases, golden_vocabulary, random_entities, weights

pytestmark = [pytest.mark.cuda, cuda_only]


def test_cuda_backend_compiled():
    assert build_info()["cuda"], "CUDA device present but the CUDA kernels were not built"


@settings(max_examples=40)
@given(entity_sets(max_n=70), weights, st.sampled_from([0.0, 0.5, 1.0]), st.integers(0, 2**31 - 1),
       st.sampled_from(["random", "first"]))
def test_cuda_equals_cpu(sets, w, prob, seed, tie_break):
    anchors, candidates, _ = sets
    miner = TripletMiner(*w, semi_hard_prob=prob, tie_break=tie_break)
    ga, gc = anchors.cuda(), (None if candidates is None else candidates.cuda())
    assert torch.equal(miner.score_matrix(ga, gc).cpu(), miner.score_matrix(anchors, candidates))
    got = miner(ga, gc, generator=torch.Generator().manual_seed(seed))
    want = miner(anchors, candidates, generator=torch.Generator().manual_seed(seed))
    for g, w_ in zip(got, want):
        assert g.device.type == "cuda"
        assert torch.equal(g.cpu(), w_)


def test_cuda_pair_scores_equal_cpu():
    g = torch.Generator().manual_seed(4)
    a = random_entities(300, Vocabulary.default(), p_disease=0.2, p_desc=0.05, generator=g)
    b = random_entities(200, Vocabulary.default(), p_disease=0.2, p_desc=0.05, generator=g)
    ia, ib = torch.randint(-1, 300, (5000,), generator=g), torch.randint(-1, 200, (5000,), generator=g)
    miner = TripletMiner()
    got = miner.pair_scores(a.cuda(), b.cuda(), ia.cuda(), ib.cuda()).cpu()
    want = miner.pair_scores(a, b, ia, ib)
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    assert torch.equal(got.nan_to_num(-1.0), want.nan_to_num(-1.0))
    with pytest.raises(RuntimeError, match="anchor_index entries"):
        miner.pair_scores(a.cuda(), b.cuda(), torch.tensor([300]).cuda(), torch.tensor([0]).cuda())


def test_cuda_golden():
    golden = golden_cases()
    vocab = golden_vocabulary(golden)
    for case in golden["cases"]:
        ents = MetaEntities.from_records(case["samples"], vocabulary=vocab).cuda()
        expected = torch.tensor(case["score"], dtype=torch.float64)
        miner = TripletMiner(**case["weights"])
        torch.testing.assert_close(miner.score_matrix(ents).cpu().double(), expected, rtol=0, atol=1e-6)
        for thr, mined in case["mining_semi_hard_prob_1"].items():
            t = TripletMiner(**case["weights"], threshold=float(thr), tie_break="first")(ents)
            assert t.positive.tolist() == mined["positive"]
            assert t.negative.tolist() == mined["negative"]


@pytest.mark.parametrize("tie_break", ["random", "first"])
@pytest.mark.parametrize("n,m", [(1, 1), (1, 0), (0, 5), (129, 1), (3000, 2500), (5000, 40)])
def test_cuda_sizes_and_tiles(n, m, tie_break):
    g = torch.Generator().manual_seed(n + m)
    vocab = Vocabulary.default()
    a = random_entities(n, vocab, p_disease=0.15, p_desc=0.05, generator=g)
    b = random_entities(m, vocab, p_disease=0.15, p_desc=0.05, generator=g)
    miner = TripletMiner(semi_hard_prob=0.5, tie_break=tie_break)
    assert torch.equal(miner.score_matrix(a.cuda(), b.cuda()).cpu(), miner.score_matrix(a, b))
    ids_a, ids_b = torch.arange(n) % 7, torch.arange(m) % 5
    got = miner(a.cuda(), b.cuda(), anchor_ids=ids_a.cuda(), candidate_ids=ids_b.cuda(),
                generator=torch.Generator().manual_seed(1))
    want = miner(a, b, anchor_ids=ids_a, candidate_ids=ids_b, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(x.cpu(), y) for x, y in zip(got, want))


def test_cuda_large_vocabulary_uses_smaller_tiles():
    vocab = Vocabulary(tuple(f"d{i}" for i in range(32)), tuple(f"a{i}" for i in range(500)),
                       tuple(f"r{i}" for i in range(100)))
    g = torch.Generator().manual_seed(0)
    a = random_entities(300, vocab, p_disease=0.3, p_desc=0.05, generator=g)
    miner = TripletMiner()
    assert torch.equal(miner.score_matrix(a.cuda()).cpu(), miner.score_matrix(a))
    g = lambda: torch.Generator().manual_seed(2)  # noqa: E731  the same tie seed on both devices
    assert all(torch.equal(x.cpu(), y) for x, y in zip(miner(a.cuda(), generator=g()), miner(a, generator=g())))


def test_cuda_reference_agrees():
    g = torch.Generator().manual_seed(9)
    a = random_entities(700, Vocabulary.default(), p_disease=0.2, p_desc=0.05, generator=g).cuda()
    assert torch.equal(TripletMiner().score_matrix(a), reference.score_matrix(a))


def test_cuda_device_mismatch_is_an_error():
    ents = MetaEntities.from_records([{"edema": {}}, {}])
    with pytest.raises(ValueError, match="candidates are on cpu but anchors on cuda"):
        TripletMiner()(ents.cuda(), ents)
    with pytest.raises(ValueError, match="anchor_ids is on cpu"):
        TripletMiner()(ents.cuda(), ents.cuda(), anchor_ids=torch.arange(2), candidate_ids=torch.arange(2).cuda())
    with pytest.raises(ValueError, match="CPU torch.Generator"):
        TripletMiner(semi_hard_prob=0.5)(ents.cuda(), generator=torch.Generator(device="cuda"))


# ---- fused triplet loss on CUDA ---------------------------------------------------------------

from medtrim_ext import MedTrimObjective, MultimodalTripletLoss  # noqa: E402

from medtrim_ext.entities.synthetic import synthetic_entities  # noqa: E402

from helpers import loss_problems  # noqa: E402


def _loss_and_grads(problem, dtype, device):
    img, txt, cand_img, cand_txt, a, p, n, margin = problem
    leaves = [None if x is None else x.detach().to(device=device, dtype=dtype).clone().requires_grad_()
              for x in (img, txt, cand_img, cand_txt)]
    li, lt = MultimodalTripletLoss(margin, "none")(leaves[0], leaves[1], (a.to(device), p.to(device), n.to(device)),
                                                   cand_img=leaves[2], cand_txt=leaves[3])
    (li.sum() + 2 * lt.sum()).backward()
    return li.detach().cpu(), lt.detach().cpu(), [None if x is None else x.grad.cpu() for x in leaves]


@settings(max_examples=40)
@given(loss_problems(max_rows=60, max_dim=300), st.sampled_from([torch.float64, torch.float32, torch.bfloat16]))
def test_cuda_loss_equals_cpu(problem, dtype):
    ci, ct, cg = _loss_and_grads(problem, dtype, "cpu")
    gi, gt, gg = _loss_and_grads(problem, dtype, "cuda")
    tol = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 2e-5}[dtype]
    torch.testing.assert_close(gi, ci, atol=tol, rtol=0)
    torch.testing.assert_close(gt, ct, atol=tol, rtol=0)
    if dtype == torch.float64:  # same active terms: the summation orders differ only slightly
        for g, c in zip(gg, cg):
            if c is not None:
                torch.testing.assert_close(g, c, atol=1e-8, rtol=1e-8)


def test_cuda_loss_large_and_deterministic():
    g = torch.Generator().manual_seed(9)
    img, txt = torch.randn(4096, 768, generator=g), torch.randn(4096, 768, generator=g)
    idx = torch.randint(-1, 4096, (3, 4096), generator=g)
    want = _loss_and_grads((img, txt, None, None, *idx, 0.3), torch.float32, "cpu")
    runs = [_loss_and_grads((img, txt, None, None, *idx, 0.3), torch.float32, "cuda") for _ in range(2)]
    torch.testing.assert_close(runs[0][0], want[0], atol=2e-5, rtol=0)
    for g0, g1, w in zip(runs[0][2], runs[1][2], want[2]):
        if w is not None:
            assert torch.equal(g0, g1)  # no atomics: bitwise reproducible
            torch.testing.assert_close(g0, w, atol=1e-5, rtol=1e-4)


def test_cuda_loss_bad_index_is_an_error_not_a_device_assert():
    img, txt = torch.randn(8, 16, device="cuda"), torch.randn(8, 16, device="cuda")
    a = torch.arange(8, device="cuda")
    with pytest.raises(RuntimeError, match="positive has an index outside"):
        MultimodalTripletLoss()(img, txt, (a, a + 1, a))
    bad = txt.clone()
    bad[0, 0] = float("inf")
    with pytest.raises(RuntimeError, match="NaN or Inf"):
        MultimodalTripletLoss()(img, bad, (a, a.flip(0), a))
    # the device is still usable afterwards
    li, lt = MultimodalTripletLoss()(img, txt, (a, a.flip(0), (a + 3) % 8))
    assert torch.isfinite(li).item()


def test_cuda_objective_autocast_bf16():
    ents = synthetic_entities(256, seed=3).to("cuda")
    enc = torch.nn.Linear(32, 64).cuda()
    x = torch.randn(256, 32, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        e = enc(x)
        out = MedTrimObjective()(e, e * 0.5 + 0.1, ents)
    out.loss.backward()
    assert torch.isfinite(enc.weight.grad).all()
    assert out.stats["valid_triplets"].item() > 0


def test_cuda_loss_too_wide_is_an_error():
    img = torch.randn(4, 20000, device="cuda")
    a = torch.arange(4, device="cuda")
    with pytest.raises(RuntimeError, match=r"at most \d+ dimensions"):
        MultimodalTripletLoss()(img, img, (a, a.flip(0), (a + 1) % 4))


# The widest embedding: 48 KiB minus the backward kernels' static shared memory, in accumulator
# elements (docs/ops.md): 32 B (64 B in float64) in the sm_80 build, 1 KiB more in nvcc 13's sm_90 build.
DOCUMENTED_MAX_DIM = {torch.float32: (12280, 12024), torch.float16: (12280, 12024),
                      torch.bfloat16: (12280, 12024), torch.float64: (6136, 6008)}


@pytest.mark.parametrize("dtype", list(DOCUMENTED_MAX_DIM))
def test_cuda_loss_dim_boundary(dtype):
    """The forward refuses exactly the dims whose backward would not launch (static + dynamic
    shared memory), and the widest accepted dim runs forward and backward, matching the CPU."""
    a = torch.arange(4, device="cuda")
    trip = (a, a.flip(0), (a + 1) % 4)
    wide = torch.randn(4, 20000, device="cuda", dtype=dtype)
    with pytest.raises(RuntimeError, match=r"at most \d+ dimensions") as err:
        MultimodalTripletLoss()(wide, wide, trip)
    limit = int(re.search(r"at most (\d+) dimensions", str(err.value)).group(1))
    assert limit in DOCUMENTED_MAX_DIM[dtype]
    g = torch.Generator().manual_seed(limit)
    img, txt = torch.randn(4, limit + 1, generator=g), torch.randn(4, limit + 1, generator=g)
    with pytest.raises(RuntimeError, match=f"at most {limit} dimensions"):
        MultimodalTripletLoss()(img.to("cuda", dtype), txt.to("cuda", dtype), trip)
    problem = (img[:, :limit], txt[:, :limit], None, None, a.cpu(), a.flip(0).cpu(), (a.cpu() + 1) % 4, 1.0)
    gi, gt, gg = _loss_and_grads(problem, dtype, "cuda")
    ci, ct, cg = _loss_and_grads(problem, dtype, "cpu")
    torch.cuda.synchronize()  # a failed launch would surface here at the latest
    torch.testing.assert_close(gi, ci, atol=1e-5, rtol=0)
    for x, y in zip(gg[:2], cg[:2]):
        torch.testing.assert_close(x.double(), y.double(), atol=1e-6, rtol=1e-2)


def _quantized(problem, dtype):
    """The problem with its embeddings rounded to `dtype` and back: the inputs a half-precision run
    really sees, so that a float64 run on them is the exact answer for the same inputs."""
    img, txt, cand_img, cand_txt, *rest = problem
    q = [None if x is None else x.to(dtype).to(torch.float64) for x in (img, txt, cand_img, cand_txt)]
    return (*q, *rest)


@settings(max_examples=30, deadline=None)
@given(loss_problems(max_rows=60, max_dim=300), st.sampled_from([torch.float16, torch.bfloat16]))
def test_cuda_half_precision_against_float64(problem, dtype):
    """fp16/bf16 on CUDA against float64 on the same (rounded) inputs: the losses to float32
    accuracy, the gradients to the dtype's own rounding (they come back in the input dtype)."""
    problem = _quantized(problem, dtype)
    hi, ht, hg = _loss_and_grads(problem, dtype, "cuda")
    ri, rt, rg = _loss_and_grads(problem, torch.float64, "cpu")
    assert hi.dtype == torch.float32 and hg[0].dtype == dtype
    torch.testing.assert_close(hi.double(), ri, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(ht.double(), rt, atol=2e-5, rtol=1e-5)
    eps = torch.finfo(dtype).eps
    for h, r in zip(hg, rg):
        if r is None:
            continue
        scale = max(1.0, r.abs().max().item())
        torch.testing.assert_close(h.double(), r, rtol=eps, atol=1e-5 * scale)


def _hot_row_problem(n, dim, hot_count, with_cand, seed):
    """`hot_count` triplets share positive 0 (a batch of identical normal reports with
    lowest-index ties); among them are the chunk boundaries of the backward's split."""
    g = torch.Generator().manual_seed(seed)
    img, txt = torch.randn(n, dim, generator=g, dtype=torch.float64), torch.randn(n, dim, generator=g, dtype=torch.float64)
    m = n + 7 if with_cand else n
    cand = (torch.randn(m, dim, generator=g, dtype=torch.float64),
            torch.randn(m, dim, generator=g, dtype=torch.float64)) if with_cand else (None, None)
    t = hot_count + n // 2
    anchor = torch.randint(0, n, (t,), generator=g)
    positive = torch.randint(0, m, (t,), generator=g)
    positive[:hot_count] = 0
    negative = torch.randint(0, m, (t,), generator=g)
    negative[: hot_count // 2] = 1  # a second hot row, at another size
    return img, txt, *cand, anchor, positive, negative, 0.5


@pytest.mark.parametrize("hot_count", [127, 128, 129, 257, 5280])
@pytest.mark.parametrize("with_cand", [False, True])
def test_cuda_loss_hot_rows(hot_count, with_cand):
    """Rows touched by thousands of triplets are split over blocks and summed in a fixed order:
    the gradient matches the CPU and is bitwise the same on every run."""
    problem = _hot_row_problem(1024, 96, hot_count, with_cand, seed=hot_count)
    ri, rt, rg = _loss_and_grads(problem, torch.float64, "cpu")
    gi, gt, gg = _loss_and_grads(problem, torch.float64, "cuda")
    torch.testing.assert_close(gi, ri, atol=1e-10, rtol=0)
    for g, r in zip(gg, rg):
        if r is not None:
            torch.testing.assert_close(g, r, atol=1e-9, rtol=1e-9)
    c32 = _loss_and_grads(problem, torch.float32, "cpu")[2]
    runs = [_loss_and_grads(problem, torch.float32, "cuda")[2] for _ in range(2)]
    for g0, g1, c in zip(*runs, c32):
        if c is not None:
            assert torch.equal(g0, g1)  # deterministic
            torch.testing.assert_close(g0, c, atol=1e-5, rtol=1e-4)


def test_cuda_backward_op_drops_out_of_range_triplets_without_a_sync():
    """The raw backward op (indices its forward never saw): an out-of-range triplet is left out of
    the plan on the device, never read out of bounds; the forward is where it raises."""
    g = torch.Generator().manual_seed(3)
    img, txt = torch.randn(16, 32, generator=g).cuda(), torch.randn(16, 32, generator=g).cuda()
    a = torch.arange(16, device="cuda")
    p, n = (a + 1) % 16, (a + 5) % 16
    _, _, active, inv = torch.ops.medtrim.triplet_loss_forward(img, txt, None, None, a, p, n, 1.0)
    ones = torch.ones(16, device="cuda")
    bad_p = p.clone()
    bad_p[3] = 10**6
    got = torch.ops.medtrim.triplet_loss_backward(ones, ones, img, txt, None, None, a, bad_p, n, active, inv)
    skip_p = p.clone()
    skip_p[3] = -1
    want = torch.ops.medtrim.triplet_loss_backward(ones, ones, img, txt, None, None, a, skip_p, n, active, inv)
    for x, y in zip(got, want):
        assert torch.equal(x, y)
    with pytest.raises(RuntimeError, match="positive has an index outside"):
        torch.ops.medtrim.triplet_loss_forward(img, txt, None, None, a, bad_p, n, 1.0)


def test_cuda_random_ties_equal_the_reference_on_tie_heavy_sets():
    """Random ties on the GPU: the tie key, not the tiling or the candidate splits, decides."""
    g = torch.Generator().manual_seed(11)
    ents = random_entities(5000, Vocabulary.default(), p_disease=0.1, p_desc=0.1, generator=g, pool=6)
    ids = torch.randperm(50_000, generator=g)[:5000]
    miner = TripletMiner(semi_hard_prob=0.5)
    draw = miner.draw(5000, torch.Generator().manual_seed(4))
    got = miner(ents.cuda(), anchor_ids=ids.cuda(), draw=draw)
    want = reference.mine_triplets(ents, anchor_ids=ids, semi_hard=draw.semi_hard, tie_seed=draw.tie_seed)
    assert all(torch.equal(x.cpu(), y) for x, y in zip(got, want))
    normals = MetaEntities.from_records([{}] * 4096).cuda()
    t = TripletMiner(upper=1.0, threshold=0.0)(normals, generator=torch.Generator().manual_seed(0))
    assert len(set(t.positive.tolist())) == 4096  # a permutation, not one shared positive


def test_cuda_soft_infonce_and_composite_equal_cpu():
    from medtrim_ext.losses.infonce import InfoNCEObjective, SoftInfoNCEObjective
    from medtrim_ext.losses.objectives import CompositeObjective

    ents = synthetic_entities(128, seed=5)
    g = torch.Generator().manual_seed(5)
    img, txt = torch.randn(128, 32, generator=g), torch.randn(128, 32, generator=g)
    obj = CompositeObjective({"medtrim": MedTrimObjective(), "soft_infonce": SoftInfoNCEObjective(),
                              "infonce": InfoNCEObjective()})
    cpu = obj(img, txt, ents, generator=torch.Generator().manual_seed(1))
    gpu = obj.cuda()(img.cuda(), txt.cuda(), ents.cuda(), generator=torch.Generator().manual_seed(1))
    assert torch.equal(gpu.triplets.positive.cpu(), cpu.triplets.positive)
    assert gpu.loss.item() == pytest.approx(cpu.loss.item(), abs=1e-4)


@pytest.mark.parametrize("threshold,upper", [(0.25, 0.6), (0.0, 0.6), (0.0, 0.0), (0.3, 1.0)])
@pytest.mark.parametrize("prob", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("tie_break", ["random", "first"])
def test_cuda_zero_score_runs_equal_cpu(threshold, upper, prob, tie_break):
    """The mining kernel's zero-score shortcuts (skipped runs, score-0 keys into the rule's own
    list only) against the CPU: many no-finding records (their kept candidates all score 0 when
    w_dis >= upper), threshold 0 (score 0 counts as semi-hard), upper 0 (nothing kept), both rules,
    runs longer than a tile and split across tiles and candidate splits."""
    g = torch.Generator().manual_seed(int(100 * threshold + 10 * upper) + int(prob * 2))
    vocab = Vocabulary.default()
    ents = random_entities(3000, vocab, p_disease=0.05, p_desc=0.1, generator=g, pool=8)
    cands = synthetic_entities(2100, seed=7)  # realistic: 32% without findings, 428 masks per 8k
    miner = TripletMiner(threshold=threshold, upper=upper, semi_hard_prob=prob, tie_break=tie_break)
    for a, b in [(ents, None), (ents, cands), (cands, ents)]:
        draw = lambda: torch.Generator().manual_seed(5)  # noqa: E731
        got = miner(a.cuda(), None if b is None else b.cuda(), generator=draw())
        want = miner(a, b, generator=draw())
        assert all(torch.equal(x.cpu(), y) for x, y in zip(got, want))


# (classes, adjectives, directions) -> words per class (wa, wr) and the kernel instantiation taken
# (csrc/cuda/meta_entity_cuda.cu: with_word_counts; the mining fallback when 128 anchors' masks do
# not fit in shared memory, checked on the host by tests/test_kernel_layouts.py)
WORD_COUNT_LAYOUTS = [
    (12, 20, 5),     # wa=1, wr=1: Words<1>, Words<1>
    (12, 40, 32),    # wa=2, wr=1
    (12, 70, 12),    # wa=3, wr=1
    (12, 128, 20),   # wa=4, wr=1 (the default vocabulary's layout)
    (5, 150, 9),     # wa=5: run-time counts, anchors in shared memory
    (5, 10, 40),     # wr=2: run-time counts, anchors in shared memory
    (32, 100, 30),   # wa=4, wr=1 but 32 classes: mining fallback (anchors from global memory)
    (32, 500, 100),  # wa=16, wr=4: mining fallback, score-matrix blocks of 8 anchors
]


@pytest.mark.parametrize("classes,adjectives,directions", WORD_COUNT_LAYOUTS)
@pytest.mark.parametrize("tie_break", ["random", "first"])
def test_cuda_word_count_layouts_equal_cpu(classes, adjectives, directions, tie_break):
    """Every compile-time word-count specialization, the run-time one and the mining fallback give
    the CPU's scores and triplets bit for bit: partial tiles, candidate splits, shared ids."""
    vocab = Vocabulary(tuple(f"d{i}" for i in range(classes)), tuple(f"a{i}" for i in range(adjectives)),
                       tuple(f"r{i}" for i in range(directions)))
    g = torch.Generator().manual_seed(classes * 1000 + adjectives + directions)
    a = random_entities(300, vocab, p_disease=0.2, p_desc=0.08, generator=g)
    b = random_entities(261, vocab, p_disease=0.2, p_desc=0.08, generator=g, pool=40)  # runs of equal masks
    miner = TripletMiner(semi_hard_prob=0.5, tie_break=tie_break)
    for x, y in [(a, None), (a, b), (b, a)]:
        yc = None if y is None else y.cuda()
        assert torch.equal(miner.score_matrix(x.cuda(), yc).cpu(), miner.score_matrix(x, y))
        draw = lambda: torch.Generator().manual_seed(3)  # noqa: E731
        got = miner(x.cuda(), yc, generator=draw())
        want = miner(x, y, generator=draw())
        assert all(torch.equal(u.cpu(), v) for u, v in zip(got, want))
