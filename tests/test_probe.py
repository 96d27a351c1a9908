"""ROC AUC and the linear probe."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medtrim_ext.evaluation import linear_probe, roc_auc


def pairwise_auc(scores, labels) -> float:
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    if not pos or not neg:
        return float("nan")
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


@given(st.lists(st.tuples(st.integers(-3, 3), st.integers(0, 1)), min_size=1, max_size=30))
def test_roc_auc_matches_pairwise_count(pairs):
    scores = [float(s) for s, _ in pairs]   # few distinct values: many ties
    labels = [y for _, y in pairs]
    got, want = roc_auc(torch.tensor(scores), torch.tensor(labels)), pairwise_auc(scores, labels)
    if math.isnan(want):
        assert math.isnan(got)
    else:
        assert got == pytest.approx(want, abs=1e-12)


def test_roc_auc_inputs():
    assert roc_auc([0.1, 0.9], [0, 1]) == 1.0
    assert roc_auc(np.array([0.9, 0.1]), np.array([True, False])) == 1.0
    assert roc_auc(torch.tensor([0.5, 0.5]), torch.tensor([0.0, 1.0])) == 0.5
    assert math.isnan(roc_auc([0.1, 0.2], [1, 1]))
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        roc_auc([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        roc_auc([0.1, 0.2], [0, float("nan")])
    with pytest.raises(ValueError, match="scores contains NaN"):
        roc_auc([float("nan"), 0.2], [0, 1])
    with pytest.raises(ValueError, match="scores has 2 entries but labels has 3"):
        roc_auc([0.1, 0.2], [0, 1, 1])
    with pytest.raises(ValueError, match="scores must be 1-D"):
        roc_auc(torch.ones(2, 2), torch.ones(2, 2))
    with pytest.raises(TypeError, match="scores must be"):
        roc_auc("abc", [0, 1])


def _data(n, d=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen) * torch.linspace(0.1, 10, d)  # badly scaled features
    return x, gen


def test_probe_separable_random_and_constant():
    x, gen = _data(1200)
    w = torch.randn(16, generator=gen)
    y = torch.stack([
        ((x / torch.linspace(0.1, 10, 16)) @ w > 0).float(),      # linearly separable
        torch.randint(0, 2, (1200,), generator=gen).float(),      # unrelated to the features
        torch.ones(1200),                                         # constant: cannot be scored
        (x[:, 0] > 0).float(),                                    # separable in training ...
    ], dim=1)
    y[800:, 3] = 0.0                                             # ... constant in the test split
    res = linear_probe(x[:800], y[:800], x[800:], y[800:], ["sep", "random", "const", "test-const"])
    assert res["auc"]["sep"] > 0.98
    assert abs(res["auc"]["random"] - 0.5) < 0.1
    assert math.isnan(res["auc"]["const"]) and math.isnan(res["auc"]["test-const"])
    assert res["skipped"] == ["const", "test-const"] and res["scored"] == ["sep", "random"]
    assert "training labels" in res["skip_reasons"]["const"]
    assert "test labels" in res["skip_reasons"]["test-const"]
    assert res["macro_auc"] == pytest.approx((res["auc"]["sep"] + res["auc"]["random"]) / 2)
    assert res["counts"]["sep"]["train_pos"] + res["counts"]["sep"]["train_neg"] == 800
    assert res["num_train"] == 800 and res["num_test"] == 400 and res["num_features"] == 16
    assert res["iterations"] >= 1 and math.isfinite(res["train_loss"])
    # deterministic, and standardisation only changes the conditioning, not the separability
    again = linear_probe(x[:800], y[:800], x[800:], y[800:], ["sep", "random", "const", "test-const"])
    assert again["auc"]["sep"] == res["auc"]["sep"] and again["train_loss"] == res["train_loss"]
    raw = linear_probe(x[:800], y[:800, :1], x[800:], y[800:, :1], ["sep"], standardize=False)
    assert raw["auc"]["sep"] > 0.9


def test_probe_unknown_labels_are_ignored_per_class():
    x, gen = _data(600)
    y = torch.stack([(x[:, 3] > 0).float(), (x[:, 5] > 0).float()], dim=1)
    noisy = y.clone()
    noisy[:300:2, 0] = float("nan")          # unknown in training, class 0 only
    noisy[400::3, 1] = float("nan")          # unknown in test, class 1 only
    # wrong labels at the unknown positions would hurt if they were used
    res = linear_probe(x[:400], noisy[:400], x[400:], noisy[400:], ["a", "b"])
    assert res["counts"]["a"]["train_pos"] + res["counts"]["a"]["train_neg"] == 400 - 150
    assert res["counts"]["b"]["test_pos"] + res["counts"]["b"]["test_neg"] == 200 - 67
    assert res["counts"]["b"]["train_pos"] + res["counts"]["b"]["train_neg"] == 400
    assert res["auc"]["a"] > 0.97 and res["auc"]["b"] > 0.97


def test_probe_all_classes_skipped():
    x, _ = _data(20, d=3)
    res = linear_probe(x[:10], torch.zeros(10, 2), x[10:], torch.zeros(10, 2), ["a", "b"])
    assert math.isnan(res["macro_auc"]) and res["scored"] == [] and res["skipped"] == ["a", "b"]


@pytest.mark.parametrize("change, exc, match", [
    (dict(train_x=torch.ones(10)), ValueError, "train_x must be 2-D"),
    (dict(test_x=torch.ones(5, 4)), ValueError, "train_x has 3 features but test_x has 4"),
    (dict(train_y=torch.zeros(10, 3)), ValueError, r"train_y must have shape \(10, 2\)"),
    (dict(test_y=torch.zeros(4, 2)), ValueError, r"test_y must have shape \(5, 2\)"),
    (dict(train_y=torch.full((10, 2), 2.0)), ValueError, "train_y must hold 0, 1 or NaN"),
    (dict(train_x=torch.full((10, 3), float("nan"))), ValueError, "train_x contains NaN"),
    (dict(test_x=torch.ones(5, 3, dtype=torch.int64)), TypeError, "test_x must be floating"),
    (dict(train_x=[[1.0]]), TypeError, "train_x must be"),
    (dict(class_names=["a", "a"]), ValueError, "duplicates"),
    (dict(class_names="ab"), TypeError, "class_names"),
    (dict(weight_decay=-1.0), ValueError, "weight_decay"),
    (dict(max_iter=0), ValueError, "max_iter"),
    (dict(solver="liblinear"), ValueError, "solver must be"),
])
def test_probe_bad_input(change, exc, match):
    args = dict(train_x=torch.randn(10, 3), train_y=torch.zeros(10, 2), test_x=torch.randn(5, 3),
                test_y=torch.zeros(5, 2), class_names=["a", "b"])
    args.update(change)
    names = args.pop("class_names")
    kw = {k: args.pop(k) for k in ("weight_decay", "max_iter", "solver") if k in args}
    with pytest.raises(exc, match=match):
        linear_probe(args["train_x"], args["train_y"], args["test_x"], args["test_y"], names, **kw)


def test_probe_accepts_numpy_and_bool_labels():
    x, _ = _data(100, d=4)
    y = (x[:, :1] > 0)
    res = linear_probe(x[:60].numpy(), y[:60].numpy(), x[60:].numpy(), y[60:].numpy(), ["a"])
    assert res["auc"]["a"] > 0.95


def _structured(seed=0, n=700, d=24, c=6):
    """Embeddings with class structure, badly scaled and off-centre; rare classes; 10% unknown."""
    gen = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, c, generator=gen) < torch.linspace(0.4, 0.02, c)).float()
    x = (torch.randn(n, d, generator=gen) * 2 + y @ torch.randn(c, d, generator=gen) + 1) * torch.linspace(0.5, 3, d)
    y[torch.rand(n, c, generator=gen) < 0.1] = float("nan")
    return x[:500], y[:500], x[500:], y[500:], [f"c{j}" for j in range(c)]


@pytest.mark.parametrize("weight_decay", [1e-3, 0.1])
def test_probe_is_scikit_learn(weight_decay):
    """linear_probe = StandardScaler on all training rows, then per class LogisticRegression
    (Newton-Cholesky) with C = 1 / (known labels * weight_decay) on the known labels, scored by
    roc_auc_score."""
    tx, ty, vx, vy, names = _structured()
    res = linear_probe(tx, ty, vx, vy, names, weight_decay=weight_decay)
    scaler = StandardScaler().fit(tx.double().numpy())
    sx, svx = scaler.transform(tx.double().numpy()), scaler.transform(vx.double().numpy())
    assert res["scored"] == names
    for j, name in enumerate(names):
        known, test_known = ~torch.isnan(ty[:, j]).numpy(), ~torch.isnan(vy[:, j]).numpy()
        model = LogisticRegression(C=1 / (known.sum() * weight_decay), tol=1e-8, max_iter=200,
                                   solver="newton-cholesky")
        model.fit(sx[known], ty[known, j].numpy())
        want = roc_auc_score(vy[test_known, j].numpy(), model.decision_function(svx[test_known]))
        assert res["auc"][name] == want
    # with every label known, the same as one scikit-learn pipeline per class
    full = torch.nan_to_num(ty, nan=0.0), torch.nan_to_num(vy, nan=0.0)
    res = linear_probe(tx, full[0], vx, full[1], names, weight_decay=weight_decay)
    for j, name in enumerate(names):
        pipe = make_pipeline(StandardScaler(), LogisticRegression(C=1 / (500 * weight_decay), tol=1e-8, max_iter=200,
                                                                  solver="newton-cholesky"))
        pipe.fit(tx.double().numpy(), full[0][:, j].numpy())
        want = roc_auc_score(full[1][:, j].numpy(), pipe.decision_function(vx.double().numpy()))
        assert res["auc"][name] == want


def test_probe_penalty_is_mean_loss_plus_half_weight_decay():
    """train_loss is sum_c (mean log-loss + weight_decay/2 ||w_c||^2), and the fit is its minimum:
    scaling the weights either way raises it."""
    tx, ty, vx, vy, names = _structured(seed=1, c=1)
    ty = torch.nan_to_num(ty, nan=0.0)
    res = linear_probe(tx, ty, vx, vy, names, weight_decay=0.05)
    sx = StandardScaler().fit_transform(tx.double().numpy())
    model = LogisticRegression(C=1 / (500 * 0.05), tol=1e-8, max_iter=200,
                               solver="newton-cholesky").fit(sx, ty[:, 0].numpy())
    y = ty[:, 0].double().numpy()

    def objective(scale):
        z = sx @ (scale * model.coef_.ravel()) + model.intercept_[0]
        return np.mean(np.logaddexp(0, z) - y * z) + 0.025 * scale ** 2 * (model.coef_ ** 2).sum()

    assert res["train_loss"] == pytest.approx(objective(1.0), rel=1e-12)
    assert objective(0.99) > objective(1.0) < objective(1.01)


def test_probe_without_penalty_and_all_unknown_class():
    tx, ty, vx, vy, names = _structured(seed=2, c=3)
    ty[:, 2] = float("nan")
    res = linear_probe(tx, ty, vx, vy, names, weight_decay=0)
    assert res["skipped"] == ["c2"] and "0 positive, 0 negative" in res["skip_reasons"]["c2"]
    assert res["auc"]["c0"] > 0.8 and math.isfinite(res["train_loss"])


def test_roc_auc_is_roc_auc_score():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        s = torch.randint(0, 6, (300,), generator=gen).float()          # ties
        y = torch.rand(300, generator=gen) < 0.2
        assert roc_auc(s, y) == roc_auc_score(y.numpy(), s.numpy())
    assert math.isnan(roc_auc([], []))


def _demo_like(seed=0, n=1000, d=64, c=9):
    """Embeddings shaped like the demo's after a short run: 64 dimensions whose spread falls by
    3.5 decades (the demo's singular values run from about 150 to 0.06), rotated so that every
    feature mixes them, and a weak class signal (probe AUC about 0.6). With L-BFGS at 200
    iterations most classes stopped unconverged here, as in `medtrim demo --steps 20`."""
    gen = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, c, generator=gen) < torch.linspace(0.3, 0.03, c)).float()
    z = (torch.randn(n, d, generator=gen) + 0.1 * y @ torch.randn(c, d, generator=gen)) * torch.logspace(0, -3.5, d)
    x = z @ torch.linalg.qr(torch.randn(d, d, generator=gen))[0]
    return x[:600], y[:600], x[600:], y[600:], [f"c{j}" for j in range(c)]


@pytest.mark.parametrize("seed", [0, 1])
def test_probe_converges_on_demo_like_embeddings(seed):
    from sklearn.exceptions import ConvergenceWarning

    tx, ty, vx, vy, names = _demo_like(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)   # an unconverged class fails the test
        res = linear_probe(tx, ty, vx, vy, names)
    assert res["scored"] == names and res["iterations"] < 200
    # the converged fit is the optimum: a much longer L-BFGS run on the same problem agrees
    sx = StandardScaler().fit_transform(tx.double().numpy())
    for j in (0, 4):
        y = ty[:, j].double().numpy()
        ref = LogisticRegression(C=1 / (600 * 1e-3), tol=1e-10, max_iter=20000).fit(sx, y)
        want = roc_auc_score(vy[:, j].numpy(), ref.decision_function(StandardScaler().fit(
            tx.double().numpy()).transform(vx.double().numpy())))
        assert res["auc"][names[j]] == pytest.approx(want, abs=1e-6)
