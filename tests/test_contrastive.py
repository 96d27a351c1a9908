"""InfoNCELoss against a straightforward CLIP loss."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from medtrim_ext.losses.infonce import InfoNCELoss


def reference_rows(img, txt, temperature):
    """Per-row (i2t + t2i) / 2 of the full-batch CLIP loss, in float64."""
    img = F.normalize(img.double(), dim=1)
    txt = F.normalize(txt.double(), dim=1)
    logits = img @ txt.T / temperature
    target = torch.arange(len(img))
    return (F.cross_entropy(logits, target, reduction="none")
            + F.cross_entropy(logits.T, target, reduction="none")) / 2


def pair(b, d, seed=0, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return ((torch.randn(b, d, generator=g) * scale).to(dtype).requires_grad_(),
            (torch.randn(b, d, generator=g) * scale).to(dtype).requires_grad_())


@given(b=st.integers(1, 12), d=st.integers(1, 9), seed=st.integers(0, 2**16),
       temperature=st.sampled_from([0.01, 0.07, 0.5, 1.0]), scale=st.sampled_from([0.01, 1.0, 50.0]))
def test_matches_reference(b, d, seed, temperature, scale):
    img, txt = pair(b, d, seed, scale=scale)
    loss = InfoNCELoss(temperature)(img, txt)
    expected = reference_rows(img, txt, temperature).mean()
    assert loss.dtype == torch.float32
    assert math.isclose(loss.item(), expected.item(), rel_tol=1e-4, abs_tol=1e-5)


@given(parts=st.integers(2, 4), b=st.integers(1, 6), d=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_candidates_equal_a_row_slice_of_the_global_batch(parts, b, d, seed):
    """An all-gathered global batch: rank r's loss is the full-batch loss averaged over its rows."""
    img, txt = pair(parts * b, d, seed)
    rows = reference_rows(img, txt, 0.07)
    crit = InfoNCELoss(0.07)
    for r in range(parts):
        local = slice(r * b, (r + 1) * b)
        loss = crit(img[local], txt[local], cand_img=img, cand_txt=txt, targets=torch.arange(b) + r * b)
        assert math.isclose(loss.item(), rows[local].mean().item(), rel_tol=1e-4, abs_tol=1e-5)


def test_default_targets_with_candidates_are_the_local_batch_first():
    img, txt = pair(4, 6)
    extra_img, extra_txt = pair(5, 6, seed=1)
    crit = InfoNCELoss(0.1)
    with_bank = crit(img, txt, cand_img=torch.cat([img, extra_img]), cand_txt=torch.cat([txt, extra_txt]))
    explicit = crit(img, txt, cand_img=torch.cat([img, extra_img]), cand_txt=torch.cat([txt, extra_txt]),
                    targets=torch.arange(4))
    assert torch.equal(with_bank, explicit)
    assert with_bank.item() > crit(img, txt).item() - 1e-6  # more negatives, at least as hard


def test_gradients_match_reference():
    img, txt = pair(6, 5, seed=3)
    crit = InfoNCELoss(0.07)
    crit(img, txt).backward()
    got = img.grad.clone(), txt.grad.clone(), crit.log_scale.grad.clone()
    img.grad = txt.grad = None
    log_scale = torch.tensor(math.log(1 / 0.07), dtype=torch.float64, requires_grad=True)
    a, b = F.normalize(img.double(), dim=1), F.normalize(txt.double(), dim=1)
    logits = log_scale.exp() * a @ b.T
    target = torch.arange(6)
    ((F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2).backward()
    for x, y in zip(got, (img.grad, txt.grad, log_scale.grad)):
        assert torch.allclose(x.double(), y.double(), atol=1e-5, rtol=1e-4)


def test_logit_scale_learnable_fixed_and_clamped():
    crit = InfoNCELoss(0.07)
    assert [n for n, _ in crit.named_parameters()] == ["log_scale"]
    assert math.isclose(crit.logit_scale.item(), 1 / 0.07, rel_tol=1e-6)
    fixed = InfoNCELoss(0.07, learnable=False)
    assert list(fixed.parameters()) == [] and "log_scale" in fixed.state_dict()
    clamped = InfoNCELoss(0.1, max_logit_scale=20.0)
    with torch.no_grad():
        clamped.log_scale.fill_(math.log(500.0))
    assert math.isclose(clamped.logit_scale.item(), 20.0, rel_tol=1e-6)
    img, txt = pair(4, 3)
    clamped(img, txt).backward()
    assert clamped.log_scale.grad.item() == 0.0  # beyond the clamp: no push further up


def test_bf16_autocast_gives_float32_loss():
    img, txt = pair(8, 16, seed=4)
    crit = InfoNCELoss(0.07)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = crit(img.bfloat16(), txt.bfloat16())
    assert loss.dtype == torch.float32
    assert math.isclose(loss.item(), crit(img, txt).item(), rel_tol=0.03)
    loss.backward()
    assert img.grad is not None and img.grad.dtype == torch.float32


def test_single_pair():
    img, txt = pair(1, 4)
    assert InfoNCELoss()(img, txt).item() == pytest.approx(0.0, abs=1e-6)  # one candidate: log 1


@pytest.mark.parametrize("case,err,match", [
    ("rows", ValueError, "same number of rows"),
    ("dim", ValueError, "dimension"),
    ("only_cand_img", ValueError, "both cand_img and cand_txt"),
    ("cand_rows", ValueError, "cand_img and cand_txt"),
    ("target_range", ValueError, r"\[0, 7\)"),
    ("target_shape", ValueError, "targets must have shape"),
    ("target_dtype", TypeError, "integer"),
    ("few_candidates", ValueError, "pass targets"),
    ("nan", ValueError, "txt contains NaN"),
    ("inf_cand", ValueError, "cand_img contains NaN or Inf"),
    ("int_emb", TypeError, "floating-point"),
    ("one_d", ValueError, "2-D"),
    ("empty", ValueError, "at least one row"),
])
def test_errors(case, err, match):
    img, txt = pair(4, 3)
    img, txt = img.detach(), txt.detach()
    ci, ct = pair(7, 3, seed=1)
    ci, ct = ci.detach(), ct.detach()
    kw = {}
    if case == "rows":
        txt = txt[:3]
    elif case == "dim":
        txt = txt[:, :2]
    elif case == "only_cand_img":
        kw = dict(cand_img=ci)
    elif case == "cand_rows":
        kw = dict(cand_img=ci, cand_txt=ct[:6])
    elif case == "target_range":
        kw = dict(cand_img=ci, cand_txt=ct, targets=torch.tensor([0, 1, 2, 7]))
    elif case == "target_shape":
        kw = dict(targets=torch.arange(3))
    elif case == "target_dtype":
        kw = dict(targets=torch.arange(4.0))
    elif case == "few_candidates":
        kw = dict(cand_img=ci[:2], cand_txt=ct[:2])
    elif case == "nan":
        txt[1, 1] = float("nan")
    elif case == "inf_cand":
        ci[3, 0] = float("inf")
        kw = dict(cand_img=ci, cand_txt=ct)
    elif case == "int_emb":
        img = img.long()
    elif case == "one_d":
        img, txt = img[0], txt[0]
    elif case == "empty":
        img, txt = img[:0], txt[:0]
    with pytest.raises(err, match=match):
        InfoNCELoss()(img, txt, **kw)


@pytest.mark.parametrize("kwargs", [dict(logit_temperature=0), dict(logit_temperature=-1),
                                    dict(logit_temperature=float("nan")), dict(max_logit_scale=0),
                                    dict(logit_temperature=0.001)])
def test_bad_construction(kwargs):
    with pytest.raises(ValueError):
        InfoNCELoss(**kwargs)
