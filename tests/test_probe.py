"""ROC AUC and the linear probe."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

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
])
def test_probe_bad_input(change, exc, match):
    args = dict(train_x=torch.randn(10, 3), train_y=torch.zeros(10, 2), test_x=torch.randn(5, 3),
                test_y=torch.zeros(5, 2), class_names=["a", "b"])
    args.update(change)
    names = args.pop("class_names")
    kw = {k: args.pop(k) for k in ("weight_decay", "max_iter") if k in args}
    with pytest.raises(exc, match=match):
        linear_probe(args["train_x"], args["train_y"], args["test_x"], args["test_y"], names, **kw)


def test_probe_accepts_numpy_and_bool_labels():
    x, _ = _data(100, d=4)
    y = (x[:, :1] > 0)
    res = linear_probe(x[:60].numpy(), y[:60].numpy(), x[60:].numpy(), y[60:].numpy(), ["a"])
    assert res["auc"]["a"] > 0.95
