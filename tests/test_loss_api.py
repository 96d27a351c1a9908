"""The loss as a torch op (opcheck, torch.compile), its errors, and MedTrimObjective."""

import math

import pytest
import torch

from medtrim_ext import (MedTrimObjective, MetaEntities, MultimodalTripletLoss, TripletMiner,
                         Vocabulary, reference)
from medtrim_ext.entities.synthetic import synthetic_entities

from helpers import random_entities


def embeddings(n=12, d=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=dtype, requires_grad=True),
            torch.randn(n, d, generator=g, dtype=dtype, requires_grad=True))


def ring(n, step_pos=1, step_neg=3):
    idx = torch.arange(n)
    return idx, (idx + step_pos) % n, (idx + step_neg) % n


# ---- torch.library ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_opcheck_forward(dtype):
    img, txt = embeddings(10, 6, dtype=dtype)
    a, p, n = ring(10)
    p = p.clone()
    p[3] = -1
    torch.library.opcheck(torch.ops.medtrim.triplet_loss_forward.default,
                          (img, txt, None, None, a, p, n, 0.3))


def test_opcheck_forward_with_candidates():
    img, txt = embeddings(5, 6, seed=1, dtype=torch.float64)
    ci, ct = embeddings(9, 6, seed=2, dtype=torch.float64)
    a = torch.tensor([0, 1, 2, 3, 4, 0])
    p = torch.tensor([8, 1, 2, -1, 4, 5])
    n = torch.tensor([0, 7, 7, 3, 6, 5])
    torch.library.opcheck(torch.ops.medtrim.triplet_loss_forward.default,
                          (img, txt, ci, ct, a, p, n, 1.0))


def test_opcheck_backward():
    img, txt = embeddings(10, 6)
    img, txt = img.detach(), txt.detach()
    a, p, n = ring(10)
    li, lt, active, inv = torch.ops.medtrim.triplet_loss_forward(img, txt, None, None, a, p, n, 0.5)
    torch.library.opcheck(torch.ops.medtrim.triplet_loss_backward.default,
                          (torch.ones_like(li), torch.ones_like(lt), img, txt, None, None, a, p, n,
                           active, inv))


def test_double_backward_raises_instead_of_a_silent_zero():
    # create_graph=True used to give first-order gradients whose own gradient through the loss
    # was silently missing (gradgradcheck failed); now differentiating them again raises.
    img, txt = embeddings(8, 5, seed=4, dtype=torch.float64)
    a, p, n = ring(8)
    crit = MultimodalTripletLoss(margin=1.0)
    li, lt = crit(img, txt, (a, p, n))
    g_img, g_txt = torch.autograd.grad(li + lt, (img, txt), create_graph=True)
    ri, rt = reference.multimodal_triplet_loss(img, txt, a, p, n, margin=1.0)
    want = torch.autograd.grad(ri + rt, (img, txt))
    torch.testing.assert_close(g_img, want[0])  # first order is still right with create_graph
    torch.testing.assert_close(g_txt, want[1])
    with pytest.raises(RuntimeError, match="has no second derivative"):
        torch.autograd.grad(g_img.pow(2).sum(), img)
    with pytest.raises(RuntimeError, match="has no second derivative"):
        torch.autograd.gradgradcheck(lambda x, y: sum(crit(x, y, (a, p, n))), (img, txt))


def _fused_sum(img, txt, a, p, n, cand=None):
    li, lt = MultimodalTripletLoss(margin=1.0)(img, txt, (a, p, n), cand_img=cand, cand_txt=cand)
    return li + lt


@pytest.mark.parametrize("with_candidates", [False, True])
def test_forward_mode_and_func_transforms_raise_instead_of_a_silent_zero(with_candidates):
    # torch.func.jvp gave a tangent of 0 (the reference gives a non-zero one) and forward_ad gave
    # None; torch.func.grad/vjp/jacrev failed with torch's internal setup_context message.
    import torch.autograd.forward_ad as fwAD

    img, txt = (x.detach() for x in embeddings(8, 5, seed=4, dtype=torch.float64))
    a, p, n = ring(8)
    cand = torch.randn(8, 5, dtype=torch.float64) if with_candidates else None
    tangent = torch.randn_like(img)
    ref = lambda x: sum(reference.multimodal_triplet_loss(x, txt, a, p, n, margin=1.0,
                                                          cand_img=cand, cand_txt=cand))
    assert torch.func.jvp(ref, (img,), (tangent,))[1].abs() > 0  # the answer we must not hide
    fused = lambda x: _fused_sum(x, txt, a, p, n, cand)
    way_out = r"forward-mode AD .*medtrim_ext\.ops\.reference\.multimodal_triplet_loss"
    with pytest.raises(RuntimeError, match=way_out):
        torch.func.jvp(fused, (img,), (tangent,))
    with pytest.raises(RuntimeError, match=way_out):
        torch.func.jacfwd(fused)(img)
    with fwAD.dual_level():
        with pytest.raises(RuntimeError, match=way_out):
            fused(fwAD.make_dual(img, tangent))
        with pytest.raises(RuntimeError, match=way_out):  # a dual text side too
            _fused_sum(img, fwAD.make_dual(txt, tangent), a, p, n, cand)
        fused(img)  # no dual input inside a dual level: plain reverse mode still works
    for transform in (torch.func.grad, torch.func.jacrev):
        with pytest.raises(RuntimeError, match=r"torch\.func.*reverse-mode autograd"):
            transform(fused)(img)
    with pytest.raises(RuntimeError, match=r"torch\.func"):
        torch.func.vjp(fused, img)
    # reverse mode through loss.backward() is untouched
    x = img.clone().requires_grad_()
    fused(x).backward()
    torch.testing.assert_close(x.grad, torch.func.grad(ref)(img))


def test_raw_ops_refuse_meta_mixed_with_real_tensors():
    # A meta argument sends the call to the fake kernel, which skipped the device checks and
    # returned uninitialised memory on the CPU (or meta outputs from real inputs).
    img, txt = (x.detach() for x in embeddings(6, 4))
    a, p, n = ring(6)
    fwd = torch.ops.medtrim.triplet_loss_forward
    with pytest.raises(RuntimeError, match="txt is on meta but img is on cpu"):
        fwd(img, txt.to("meta"), None, None, a, p, n, 0.3)
    with pytest.raises(RuntimeError, match="negative is on meta but img is on cpu"):
        fwd(img, txt, None, None, a, p, n.to("meta"), 0.3)
    li, lt, active, inv = fwd(img, txt, None, None, a, p, n, 0.3)
    with pytest.raises(RuntimeError, match="inv_norms is on meta but img is on cpu"):
        torch.ops.medtrim.triplet_loss_backward(torch.ones_like(li), torch.ones_like(lt), img, txt,
                                                None, None, a, p, n, active, inv.to("meta"))
    # all on meta: shapes only, as torch.compile needs
    out = fwd(img.to("meta"), txt.to("meta"), None, None, a.to("meta"), p.to("meta"), n.to("meta"), 0.3)
    assert all(t.device.type == "meta" for t in out) and out[0].shape == (6,)


def test_torch_compile_mine_and_loss_fullgraph():
    g = torch.Generator().manual_seed(5)
    ents = random_entities(24, Vocabulary.default(), p_disease=0.3, p_desc=0.2, generator=g)
    img, txt = embeddings(24, 16, seed=3)
    crit = MultimodalTripletLoss(0.3)

    def step(img, txt, dis, adj, dirs):
        ids = torch.arange(dis.shape[0])
        pos, neg = torch.ops.medtrim.mine_triplets(dis, adj, dirs, ids, dis, adj, dirs, ids,
                                                   torch.ones_like(ids, dtype=torch.bool),
                                                   0.85, 0.1, 0.05, 0.25, 0.6)
        li, lt = crit(img, txt, (ids, pos, neg))
        return li + lt

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got = compiled(img, txt, ents.disease_bits, ents.adjective_bits, ents.direction_bits)
    got.backward()
    grads = img.grad.clone(), txt.grad.clone()
    img.grad = txt.grad = None
    want = step(img, txt, ents.disease_bits, ents.adjective_bits, ents.direction_bits)
    want.backward()
    assert got.item() == pytest.approx(want.item(), abs=1e-6)
    torch.testing.assert_close(grads[0], img.grad)
    torch.testing.assert_close(grads[1], txt.grad)


# ---- bad input --------------------------------------------------------------------------------

@pytest.mark.parametrize("make, error, match", [
    (lambda i, t, tr: (i[:5], t, tr), ValueError, "same number of rows"),
    (lambda i, t, tr: (i, t[:, :4], tr), ValueError, "txt_emb has dimension 4"),
    (lambda i, t, tr: (i.long(), t, tr), TypeError, "img_emb must be a floating-point"),
    (lambda i, t, tr: (i[0], t, tr), ValueError, "img_emb must be 2-D"),
    (lambda i, t, tr: ([1.0], t, tr), TypeError, "img_emb must be a torch.Tensor"),
    (lambda i, t, tr: (i, t, tr[:2]), TypeError, "triplets must be"),
    (lambda i, t, tr: (i, t, (tr[0], tr[1].float(), tr[2])), TypeError, "triplets.positive must be an integer"),
    (lambda i, t, tr: (i, t, (tr[0], tr[1][:3], tr[2])), ValueError, "same length"),
    (lambda i, t, tr: (i, t, (tr[0], tr[1], tr[2].view(2, -1))), ValueError, "triplets.negative must be 1-D"),
])
def test_bad_arguments(make, error, match):
    img, txt = embeddings(12, 8)
    with pytest.raises(error, match=match):
        MultimodalTripletLoss()(*make(img, txt, ring(12)))


@pytest.mark.parametrize("which, value, match", [
    ("anchor", 12, "anchor has an index outside"),
    ("positive", -2, "positive has an index outside"),
    ("negative", 99, "negative has an index outside"),
])
def test_index_out_of_range(which, value, match):
    img, txt = embeddings(12, 8)
    t = dict(zip(("anchor", "positive", "negative"), (x.clone() for x in ring(12))))
    t[which][4] = value
    with pytest.raises(RuntimeError, match=match):
        MultimodalTripletLoss()(img, txt, (t["anchor"], t["positive"], t["negative"]))


def test_candidate_index_range_names_the_candidates():
    img, txt = embeddings(4, 8)
    ci, ct = embeddings(6, 8, seed=1)
    with pytest.raises(RuntimeError, match=r"positive has an index outside \[-1, 6\) \(cand_img"):
        MultimodalTripletLoss()(img, txt, (torch.arange(4), torch.tensor([0, 1, 6, 2]),
                                           torch.tensor([1, 2, 3, 4])), cand_img=ci, cand_txt=ct)


def test_nan_embeddings_raise():
    img, txt = embeddings(6, 4)
    bad = txt.detach().clone()
    bad[2, 1] = float("nan")
    with pytest.raises(RuntimeError, match="NaN or Inf"):
        MultimodalTripletLoss()(img, bad, ring(6))


def test_candidates_must_come_in_pairs():
    img, txt = embeddings(6, 4)
    with pytest.raises(ValueError, match="both cand_img and cand_txt"):
        MultimodalTripletLoss()(img, txt, ring(6), cand_img=img)
    with pytest.raises(ValueError, match="cand_txt has dimension 3"):
        MultimodalTripletLoss()(img, txt, ring(6), cand_img=img, cand_txt=txt[:, :3])


def test_raw_op_checks_are_errors_not_crashes():
    img, txt = embeddings(6, 4)
    a, p, n = ring(6)
    with pytest.raises(RuntimeError, match="anchor must be int64"):
        torch.ops.medtrim.triplet_loss_forward(img, txt, None, None, a.int(), p, n, 0.3)
    with pytest.raises(RuntimeError, match="margin must be finite"):
        torch.ops.medtrim.triplet_loss_forward(img, txt, None, None, a, p, n, math.inf)
    with pytest.raises(RuntimeError, match="txt must have the dtype of img"):
        torch.ops.medtrim.triplet_loss_forward(img, txt.double(), None, None, a, p, n, 0.3)
    _, _, active, inv = torch.ops.medtrim.triplet_loss_forward(img, txt, None, None, a, p, n, 0.3)
    with pytest.raises(RuntimeError, match="inv_norms must be"):
        torch.ops.medtrim.triplet_loss_backward(torch.ones(6), torch.ones(6), img, txt, None, None,
                                                a, p, n, active, inv[:3])
    with pytest.raises(RuntimeError, match="negative has an index outside"):
        torch.ops.medtrim.triplet_loss_backward(torch.ones(6), torch.ones(6), img, txt, None, None,
                                                a, p, n + 6, active, inv)


# ---- MedTrimObjective -------------------------------------------------------------------------

def test_objective_matches_miner_plus_loss():
    ents = synthetic_entities(64, seed=4)
    img, txt = embeddings(64, 16, seed=4)
    miner, crit = TripletMiner(), MultimodalTripletLoss(0.3)
    out = MedTrimObjective(miner, crit)(img, txt, ents, generator=torch.Generator().manual_seed(1))
    triplets = miner(ents, generator=torch.Generator().manual_seed(1))
    for got, want in zip(out.triplets, triplets):
        assert torch.equal(got, want)
    li, lt = reference.multimodal_triplet_loss(img, txt, *triplets, 0.3)
    assert out.loss_img.item() == pytest.approx(li.item(), abs=1e-5)
    assert out.loss_txt.item() == pytest.approx(lt.item(), abs=1e-5)
    assert out.loss.item() == pytest.approx(li.item() + lt.item(), abs=1e-5)

    valid = triplets.valid
    pos, neg = miner.triplet_scores(ents, triplets)
    s = out.stats
    assert s["valid_triplets"].item() == valid.sum().item()
    assert s["valid_fraction"].item() == pytest.approx(valid.float().mean().item())
    assert s["pos_score"].item() == pytest.approx(pos[valid].mean().item(), abs=1e-6)
    assert s["neg_score"].item() == pytest.approx(neg[valid].mean().item(), abs=1e-6)
    per_i, per_t = reference.multimodal_triplet_loss(img, txt, *triplets, 0.3, reduction="none")
    active = valid & ((per_i + per_t) > 0)
    assert s["active_fraction"].item() == pytest.approx(active.sum().item() / valid.sum().item(), abs=1e-6)
    out.loss.backward()
    assert img.grad is not None and txt.grad is not None


def test_objective_with_a_memory_bank():
    ents, bank = synthetic_entities(16, seed=1), synthetic_entities(40, seed=2)
    img, txt = embeddings(16, 8, seed=5)
    bi, bt = embeddings(40, 8, seed=6)
    out = MedTrimObjective()(img, txt, ents, cand_img=bi, cand_txt=bt, cand_entities=bank)
    assert int(out.triplets.positive.max()) < 40
    out.loss.backward()
    assert bi.grad is not None and bt.grad is not None


def test_objective_without_triplets():
    ents = MetaEntities.from_records([{}])
    img, txt = embeddings(1, 8)
    out = MedTrimObjective()(img, txt, ents)
    assert out.loss.item() == 0 and out.stats["valid_triplets"].item() == 0
    assert math.isnan(out.stats["pos_score"].item())
    out.loss.backward()


def test_objective_errors():
    ents = synthetic_entities(8, seed=0)
    img, txt = embeddings(6, 8)
    with pytest.raises(ValueError, match="entities has 8 samples but img_emb has 6"):
        MedTrimObjective()(img, txt, ents)
    with pytest.raises(TypeError, match="entities must be MetaEntities"):
        MedTrimObjective()(img, txt, [{}] * 6)
    with pytest.raises(ValueError, match="cand_img, cand_txt and cand_entities together"):
        MedTrimObjective()(img, txt, synthetic_entities(6, seed=0), cand_img=img)
    with pytest.raises(TypeError, match="miner must be a TripletMiner"):
        MedTrimObjective(miner="x")


@pytest.mark.parametrize("with_candidates", [False, True])
def test_sort_plan_equals_counting_plan(with_candidates):
    """The CUDA backward builds its plan with a stable sort, the CPU one with a counting sort:
    both must list, per row, the same (triplet, role) entries in the same order."""
    g = torch.Generator().manual_seed(11)
    img, txt = torch.randn(30, 4, generator=g), torch.randn(30, 4, generator=g)
    cand = (torch.randn(17, 4, generator=g), torch.randn(17, 4, generator=g)) if with_candidates else (None, None)
    m = 17 if with_candidates else 30
    a, p, n = torch.randint(-1, 30, (200,), generator=g), torch.randint(-1, m, (200,), generator=g), \
        torch.randint(-1, m, (200,), generator=g)
    sort_plan = torch.ops.medtrim._triplet_loss_plan(img, txt, *cand, a, p, n, False)
    count_plan = torch.ops.medtrim._triplet_loss_plan(img, txt, *cand, a, p, n, True)
    offsets, codes = count_plan
    # the sort-based plan keeps skipped triplets' entries after offsets[-1] (never read)
    assert torch.equal(sort_plan[0], offsets) and torch.equal(sort_plan[1][: codes.numel()], codes)
    valid = (a >= 0) & (p >= 0) & (n >= 0)
    assert offsets[-1].item() == 6 * valid.sum().item() == codes.numel()
    # row 0 of img: exactly the entries where it is the anchor, or (shared) a positive/negative
    t, role = codes[offsets[0]:offsets[1]] // 6, codes[offsets[0]:offsets[1]] % 6
    assert (a[t[role == 0]] == 0).all() and torch.equal(t, t.sort().values)


def test_torch_compile_objective_fullgraph():
    ents = synthetic_entities(48, seed=2)
    img, txt = embeddings(48, 16, seed=7)
    objective = MedTrimObjective()
    compiled = torch.compile(lambda i, t, e: objective(i, t, e).loss, fullgraph=True, backend="aot_eager")
    torch.manual_seed(0)  # the tie seed comes from the default generator, inside the graph
    got = compiled(img, txt, ents)
    got.backward()
    grads = img.grad.clone()
    img.grad = txt.grad = None
    torch.manual_seed(0)
    want = objective(img, txt, ents).loss
    want.backward()
    assert got.item() == pytest.approx(want.item(), abs=1e-6)
    torch.testing.assert_close(grads, img.grad)


def test_torch_compile_objective_fullgraph_with_seeded_mining():
    # The documented way for a seeded draw under fullgraph=True (a torch.Generator cannot enter the
    # graph): mine with the generator outside, pass triplets= into the compiled objective.
    ents = synthetic_entities(48, seed=2)
    img, txt = embeddings(48, 16, seed=7)
    objective = MedTrimObjective()
    compiled = torch.compile(lambda i, t, e, tr: objective(i, t, e, triplets=tr).loss,
                             fullgraph=True, backend="aot_eager")
    triplets = objective.miner(ents, generator=torch.Generator().manual_seed(5))
    got = compiled(img, txt, ents, triplets)
    got.backward()
    grads = img.grad.clone()
    img.grad = txt.grad = None
    want = objective(img, txt, ents, generator=torch.Generator().manual_seed(5)).loss
    want.backward()
    assert got.item() == pytest.approx(want.item(), abs=1e-6)
    torch.testing.assert_close(grads, img.grad)


# ---- the import layers ------------------------------------------------------------------------

def test_reference_imports_first_in_a_fresh_process(tmp_path):
    """ops.reference once imported mining.miner, which imports ops: a circle that only worked in
    the order medtrim_ext/__init__.py happened to use. Triplets and default_ids now live below
    both (entities/triplets.py), and every public path to them names the same class."""
    import subprocess
    import sys

    script = ("import medtrim_ext.ops.reference as r, medtrim_ext, medtrim_ext.mining as m, "
              "medtrim_ext.mining.miner as mm, medtrim_ext.entities as e\n"
              "assert r.Triplets is medtrim_ext.Triplets is m.Triplets is mm.Triplets is e.Triplets\n"
              "assert r.default_ids is m.default_ids is mm.default_ids\n")
    # run outside the repository: its root on sys.path would shadow the installed package
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr


def test_lower_layers_import_nothing_above_them():
    """entities/ imports no other stage and ops/ only entities/ (and utils/): the layers of
    docs/architecture.md, checked on the sources so that a circle cannot come back."""
    import ast
    from pathlib import Path

    import medtrim_ext

    root = Path(medtrim_ext.__file__).parent
    above = {"entities": ("ops", "mining", "losses", "training", "evaluation", "models", "datasets", "apps"),
             "ops": ("mining", "losses", "training", "evaluation", "models", "datasets", "apps")}
    bad = []
    for layer, forbidden in above.items():
        for path in sorted((root / layer).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.level >= 2 and node.module:
                    target = node.module.split(".")[0]
                elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medtrim_ext."):
                    target = node.module.split(".")[1]
                else:
                    continue
                if target in forbidden:
                    bad.append(f"{layer}/{path.name}: imports {target}")
    assert not bad, bad
