"""MultimodalTripletLoss: kernels against the published numbers and the pure-PyTorch reference."""

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from medtrim_ext import MultimodalTripletLoss, Triplets, reference

from helpers import golden_loss_cases, loss_problems

# float32 kernel vs float32 reference: same inputs, different summation order
F32_LOSS_ATOL = 2e-5
F32_GRAD_TOL = 1e-4  # relative to the largest gradient entry
# half inputs: both sides compute in float32; gradients are rounded to the input dtype
HALF_GRAD_TOL = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def kernel_and_reference(problem, dtype, reduction="mean"):
    """Losses and gradients of (loss_img + 2 * loss_txt) from the kernel and the reference."""
    img, txt, cand_img, cand_txt, a, p, n, margin = problem
    results = []
    for fn in ("kernel", "reference"):
        leaves = [None if x is None else x.detach().to(dtype).clone().requires_grad_() for x in (img, txt, cand_img, cand_txt)]
        if fn == "kernel":
            li, lt = MultimodalTripletLoss(margin, reduction)(
                leaves[0], leaves[1], (a, p, n), cand_img=leaves[2], cand_txt=leaves[3])
        else:
            li, lt = reference.multimodal_triplet_loss(
                leaves[0], leaves[1], a, p, n, margin, cand_img=leaves[2], cand_txt=leaves[3],
                reduction=reduction)
        (li.sum() + 2 * lt.sum()).backward()
        results.append((li.detach(), lt.detach(), [None if x is None else x.grad for x in leaves]))
    return results


def hinge_clearance(problem) -> float:
    """Smallest |hinge argument| over valid triplets (float64): near 0 the two sides may disagree
    on whether a term is active, which legitimately changes the gradient."""
    img, txt, cand_img, cand_txt, a, p, n, margin = problem
    cand_img = img if cand_img is None else cand_img
    cand_txt = txt if cand_txt is None else cand_txt
    valid = (a >= 0) & (p >= 0) & (n >= 0)
    if not valid.any():
        return float("inf")
    a, p, n = a[valid], p[valid], n[valid]
    ni, nt, ci, ct = (reference.normalize_rows(x) for x in (img, txt, cand_img, cand_txt))
    args = []
    for x in (ni[a], nt[a]):
        for pos, neg in ((ci[p], ci[n]), (ct[p], ct[n])):
            args.append((x * neg).sum(1) - (x * pos).sum(1) + margin)
    return torch.cat(args).abs().min().item()


def gradient_scale(problem) -> float:
    """Size of one gradient term: terms are (unit vector) / |row|, and may cancel to ~0 in the sum,
    so tolerances are relative to the largest inverse row norm, not to the result."""
    rows = torch.cat([x for x in problem[:4] if x is not None])
    norms = torch.linalg.vector_norm(rows, dim=1)
    norms = norms[norms > 1e-8]
    return 1.0 if norms.numel() == 0 else max(1.0, (1 / norms.min()).item())


def assert_grads_close(got, want, tol, problem):
    floor = gradient_scale(problem)
    for g, w in zip(got, want):
        if w is None:
            assert g is None
            continue
        assert g.dtype == w.dtype and g.shape == w.shape
        scale = max(w.abs().max().item(), floor) if w.numel() else 1.0
        torch.testing.assert_close(g.double(), w.double(), atol=tol * scale, rtol=0)


# ---- golden numbers from the published loss ---------------------------------------------------

@pytest.mark.parametrize("case", golden_loss_cases(), ids=lambda c: f"n{c['n']}-d{c['dim']}-m{c['margin']}")
def test_golden_values_and_gradients(case):
    x = {k: torch.tensor(v, dtype=torch.float64) for k, v in case["inputs"].items()}
    n = case["n"]
    img = torch.cat([x["a_i"], x["p_i"], x["n_i"]]).requires_grad_()
    txt = torch.cat([x["a_t"], x["p_t"], x["n_t"]]).requires_grad_()
    idx = torch.arange(n)
    li, lt = MultimodalTripletLoss(case["margin"])(img, txt, Triplets(idx, idx + n, idx + 2 * n))
    assert li.item() == pytest.approx(case["loss_img"], abs=1e-12)
    assert lt.item() == pytest.approx(case["loss_txt"], abs=1e-12)
    (li + lt).backward()
    g = {k: torch.tensor(v, dtype=torch.float64) for k, v in case["grad_of_sum"].items()}
    torch.testing.assert_close(img.grad, torch.cat([g["a_i"], g["p_i"], g["n_i"]]), atol=1e-7, rtol=0)
    torch.testing.assert_close(txt.grad, torch.cat([g["a_t"], g["p_t"], g["n_t"]]), atol=1e-7, rtol=0)


def test_golden_float32():
    case = golden_loss_cases()[1]
    x = {k: torch.tensor(v, dtype=torch.float32) for k, v in case["inputs"].items()}
    n = case["n"]
    idx = torch.arange(n)
    li, lt = MultimodalTripletLoss(case["margin"])(
        torch.cat([x["a_i"], x["p_i"], x["n_i"]]), torch.cat([x["a_t"], x["p_t"], x["n_t"]]),
        (idx, idx + n, idx + 2 * n))
    assert li.dtype == torch.float32
    assert li.item() == pytest.approx(case["loss_img"], abs=1e-6)
    assert lt.item() == pytest.approx(case["loss_txt"], abs=1e-6)


# ---- kernel == reference ----------------------------------------------------------------------

@given(loss_problems(), st.sampled_from(["mean", "sum", "none"]))
def test_float64_equals_reference(problem, reduction):
    (ki, kt, kg), (ri, rt, rg) = kernel_and_reference(problem, torch.float64, reduction)
    torch.testing.assert_close(ki, ri, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(kt, rt, atol=1e-12, rtol=1e-12)
    assume(hinge_clearance(problem) > 1e-9)
    assert_grads_close(kg, rg, 1e-9, problem)


@given(loss_problems())
def test_float32_equals_reference(problem):
    (ki, kt, kg), (ri, rt, rg) = kernel_and_reference(problem, torch.float32)
    assert ki.dtype == torch.float32
    torch.testing.assert_close(ki, ri, atol=F32_LOSS_ATOL, rtol=0)
    torch.testing.assert_close(kt, rt, atol=F32_LOSS_ATOL, rtol=0)
    assume(hinge_clearance(problem) > 1e-3)
    assert_grads_close(kg, rg, F32_GRAD_TOL, problem)


@settings(max_examples=30)
@given(loss_problems(max_rows=24, max_dim=40), st.sampled_from([torch.float16, torch.bfloat16]))
def test_half_precision_equals_reference(problem, dtype):
    (ki, kt, kg), (ri, rt, rg) = kernel_and_reference(problem, dtype)
    assert ki.dtype == torch.float32  # float32 accumulation and result
    torch.testing.assert_close(ki, ri, atol=F32_LOSS_ATOL, rtol=0)
    torch.testing.assert_close(kt, rt, atol=F32_LOSS_ATOL, rtol=0)
    assume(hinge_clearance(problem) > 1e-2)
    for g in kg:
        assert g is None or g.dtype == dtype
    assert_grads_close(kg, rg, HALF_GRAD_TOL[dtype], problem)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    img, txt = (torch.randn(9, 6, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    a = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 2, -1])
    p = torch.tensor([3, 3, 0, 1, 8, 8, 2, 2, 1, 5, 4])
    n = torch.tensor([7, 6, 6, 6, 0, 1, 1, 4, -1, 7, 3])
    crit = MultimodalTripletLoss(0.8)
    assert torch.autograd.gradcheck(lambda x, y: sum(crit(x, y, (a, p, n))), (img, txt))


def test_gradcheck_float64_with_candidates():
    g = torch.Generator().manual_seed(4)
    img, txt = (torch.randn(5, 7, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    ci, ct = (torch.randn(11, 7, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    a = torch.tensor([0, 1, 2, 3, 4, 4])
    p = torch.tensor([3, 10, 0, 1, 8, 8])
    n = torch.tensor([7, 6, 6, 6, 0, 2])
    crit = MultimodalTripletLoss(1.5, reduction="sum")
    assert torch.autograd.gradcheck(
        lambda x, y, u, v: sum(crit(x, y, (a, p, n), cand_img=u, cand_txt=v)), (img, txt, ci, ct))


# ---- edge cases --------------------------------------------------------------------------------

def test_no_valid_triplet_gives_zero_with_a_graph():
    img, txt = torch.randn(1, 4, requires_grad=True), torch.randn(1, 4, requires_grad=True)
    minus = torch.tensor([-1])
    li, lt = MultimodalTripletLoss()(img, txt, (torch.tensor([0]), minus, minus))
    assert li.item() == 0 and lt.item() == 0 and li.requires_grad
    (li + lt).backward()
    assert torch.equal(img.grad, torch.zeros_like(img)) and torch.equal(txt.grad, torch.zeros_like(txt))


def test_empty_triplets():
    img, txt = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4, requires_grad=True)
    e = torch.zeros(0, dtype=torch.int64)
    for reduction in ("mean", "sum"):
        li, lt = MultimodalTripletLoss(reduction=reduction)(img, txt, (e, e, e))
        assert li.item() == 0 and lt.item() == 0
        (li + lt).backward()
    li, _ = MultimodalTripletLoss(reduction="none")(img, txt, (e, e, e))
    assert li.shape == (0,)


def test_zero_vectors_are_finite_with_zero_gradient():
    img = torch.randn(4, 8)
    img[1] = 0
    txt = torch.randn(4, 8)
    txt[2] = 0
    img.requires_grad_()
    txt.requires_grad_()
    a, p, n = torch.tensor([0, 1, 2, 3]), torch.tensor([1, 2, 3, 0]), torch.tensor([2, 3, 0, 1])
    li, lt = MultimodalTripletLoss(0.3, "none")(img, txt, (a, p, n))
    assert torch.isfinite(li).all() and torch.isfinite(lt).all()
    # anchor 1's image is zero: its image-image and image-text distances are all 1, so each term is m
    assert li[1].item() == pytest.approx(0.3, abs=1e-6)
    (li.sum() + lt.sum()).backward()
    assert torch.isfinite(img.grad).all() and torch.isfinite(txt.grad).all()
    assert torch.equal(img.grad[1], torch.zeros(8)) and torch.equal(txt.grad[2], torch.zeros(8))


def test_identical_embeddings_give_the_margin():
    img = torch.ones(5, 3, requires_grad=True)
    txt = torch.ones(5, 3, requires_grad=True)
    idx = torch.arange(5)
    li, lt = MultimodalTripletLoss(0.25)(img, txt, (idx, (idx + 1) % 5, (idx + 2) % 5))
    assert li.item() == pytest.approx(0.25, abs=1e-6) and lt.item() == pytest.approx(0.25, abs=1e-6)
    (li + lt).backward()
    assert img.grad.abs().max() < 1e-6  # all directions equal: nothing to pull apart


def test_scale_invariance():
    g = torch.Generator().manual_seed(1)
    img, txt = torch.randn(20, 16, generator=g), torch.randn(20, 16, generator=g)
    idx = torch.arange(20)
    t = (idx, (idx + 3) % 20, (idx + 7) % 20)
    crit = MultimodalTripletLoss(0.3, "none")
    li, lt = crit(img, txt, t)
    li2, lt2 = crit(img * 1000, txt * 0.001, t)
    torch.testing.assert_close(li, li2, atol=1e-5, rtol=0)
    torch.testing.assert_close(lt, lt2, atol=1e-5, rtol=0)


def test_backward_is_deterministic():
    g = torch.Generator().manual_seed(2)
    img, txt = torch.randn(300, 64, generator=g), torch.randn(300, 64, generator=g)
    idx = torch.randint(0, 300, (3, 2000), generator=g)
    grads = []
    for _ in range(2):
        x, y = img.clone().requires_grad_(), txt.clone().requires_grad_()
        sum(MultimodalTripletLoss(0.5)(x, y, tuple(idx))).backward()
        grads.append((x.grad, y.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


def test_non_contiguous_inputs():
    g = torch.Generator().manual_seed(8)
    base = torch.randn(10, 24, generator=g)
    img, txt = base[:, ::2], base[:, 1::2]
    idx = torch.arange(10)
    t = (idx, (idx + 1) % 10, (idx + 4) % 10)
    got = MultimodalTripletLoss()(img, txt, t)
    want = reference.multimodal_triplet_loss(img.contiguous(), txt.contiguous(), *t)
    torch.testing.assert_close(got, want, atol=F32_LOSS_ATOL, rtol=0)


def test_mixed_dtypes_are_promoted():
    img = torch.randn(6, 8, dtype=torch.bfloat16, requires_grad=True)
    txt = torch.randn(6, 8, dtype=torch.float32, requires_grad=True)
    idx = torch.arange(6)
    li, lt = MultimodalTripletLoss()(img, txt, (idx, (idx + 1) % 6, (idx + 2) % 6))
    (li + lt).backward()
    assert img.grad.dtype == torch.bfloat16 and txt.grad.dtype == torch.float32


def test_autocast_bfloat16_training_step():
    torch.manual_seed(0)
    enc_img, enc_txt = torch.nn.Linear(12, 8), torch.nn.Linear(10, 8)
    x, y = torch.randn(16, 12), torch.randn(16, 10)
    idx = torch.arange(16)
    t = (idx, (idx + 1) % 16, (idx + 5) % 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ei, et = enc_img(x), enc_txt(y)
        assert ei.dtype == torch.bfloat16
        li, lt = MultimodalTripletLoss(0.3)(ei, et, t)
    (li + lt).backward()
    assert enc_img.weight.grad is not None and torch.isfinite(enc_img.weight.grad).all()
    want = reference.multimodal_triplet_loss(enc_img(x), enc_txt(y), *t, 0.3)
    assert li.item() == pytest.approx(want[0].item(), abs=0.05)


def test_repr_and_arguments():
    assert "margin=0.5" in repr(MultimodalTripletLoss(0.5))
    with pytest.raises(ValueError, match="reduction"):
        MultimodalTripletLoss(reduction="avg")
    with pytest.raises(ValueError, match="margin"):
        MultimodalTripletLoss(float("nan"))
