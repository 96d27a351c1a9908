"""Linear probe: one-vs-rest logistic regression on frozen embeddings, scored by ROC AUC."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

__all__ = ["linear_probe", "roc_auc"]


def _as_1d(name: str, x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    elif isinstance(x, (list, tuple)):
        x = torch.tensor(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, array or list, got {type(x).__name__}")
    if x.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(x.shape)}")
    return x.detach().cpu()


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (1 = positive).

    Rank-based (Mann-Whitney U): the probability that a random positive scores higher than a
    random negative, ties counting one half (average ranks). NaN when only one class is present.
    ``scores`` must be finite; ``labels`` 0/1 (bool, int or float).
    """
    s = _as_1d("scores", scores).to(torch.float64)
    y = _as_1d("labels", labels)
    if s.shape != y.shape:
        raise ValueError(f"scores has {s.numel()} entries but labels has {y.numel()}")
    if not bool(torch.isfinite(s).all()):
        raise ValueError("scores contains NaN or infinite values")
    y = y.to(torch.float64)
    if not bool(((y == 0) | (y == 1)).all()):
        raise ValueError("labels must be 0 or 1 (drop unknown labels before calling roc_auc)")
    n_pos = int(y.sum())
    n_neg = y.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    sorted_s, order = s.sort()
    _, inverse, counts = torch.unique_consecutive(sorted_s, return_inverse=True, return_counts=True)
    # average 1-based rank of each group of equal scores
    ends = counts.cumsum(0).to(torch.float64)
    avg_rank = ends - (counts.to(torch.float64) - 1) / 2
    ranks = torch.empty_like(s)
    ranks[order] = avg_rank[inverse]
    u = float((ranks * y).sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def _check_features(name: str, x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (samples, features), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {x.dtype}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")
    return x.detach().cpu().to(torch.float32)


def _check_labels(name: str, y, n: int, c: int) -> torch.Tensor:
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(y)
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(y).__name__}")
    if tuple(y.shape) != (n, c):
        raise ValueError(f"{name} must have shape ({n}, {c}) (samples, classes), got {tuple(y.shape)}")
    y = y.detach().cpu().to(torch.float32)
    known = ~torch.isnan(y)
    if not bool(((y[known] == 0) | (y[known] == 1)).all()):
        raise ValueError(f"{name} must hold 0, 1 or NaN (unknown)")
    return y


def linear_probe(train_x, train_y, test_x, test_y, class_names: Sequence[str], *,
                 weight_decay: float = 1e-3, max_iter: int = 200, standardize: bool = True) -> dict:
    """Fit one logistic regression per class on ``train_x`` and report test ROC AUC.

    Args:
        train_x ``(N, D)``, test_x ``(T, D)``: float features (frozen embeddings).
        train_y ``(N, C)``, test_y ``(T, C)``: labels 0/1, NaN = unknown (ignored for that class
            only, in training and in scoring).
        class_names: C unique names, the columns of the labels.
        weight_decay: L2 penalty ``weight_decay / 2 * ||w_c||^2`` added to each class's mean
            log-loss (the bias is not penalised).
        max_iter: L-BFGS iterations (full batch, zero start, strong-Wolfe line search: the
            result is deterministic).
        standardize: scale features to zero mean, unit variance with the *training* statistics
            (constant features are left unscaled).

    The classes' objectives are independent, so they are minimised together as one sum (one
    matrix product per step for all classes); this is exactly one-vs-rest.

    Returns::

        {"auc": {class: test AUC or NaN}, "macro_auc": mean AUC of the scored classes (NaN if
         none), "scored": [classes], "skipped": [classes], "skip_reasons": {class: why},
         "counts": {class: {"train_pos", "train_neg", "test_pos", "test_neg"}},
         "num_train", "num_test", "num_features", "iterations", "train_loss"}

    A class is skipped (not scored, AUC NaN) when its known training labels or its known test
    labels are all of one class.
    """
    tx = _check_features("train_x", train_x)
    vx = _check_features("test_x", test_x)
    if tx.shape[1] != vx.shape[1]:
        raise ValueError(f"train_x has {tx.shape[1]} features but test_x has {vx.shape[1]}")
    if isinstance(class_names, str) or not isinstance(class_names, Sequence):
        raise TypeError("class_names must be a sequence of names")
    names = list(class_names)
    if not names or not all(isinstance(c, str) and c for c in names):
        raise ValueError("class_names must be non-empty strings, at least one")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names has duplicates: {sorted({c for c in names if names.count(c) > 1})}")
    c = len(names)
    ty = _check_labels("train_y", train_y, tx.shape[0], c)
    vy = _check_labels("test_y", test_y, vx.shape[0], c)
    if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay) and weight_decay >= 0):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")

    if standardize:
        mean = tx.mean(0)
        std = tx.std(0, unbiased=False)
        std = torch.where(std > 0, std, torch.ones_like(std))
        tx = (tx - mean) / std
        vx = (vx - mean) / std

    t_known = ~torch.isnan(ty)
    v_known = ~torch.isnan(vy)
    t_pos = ((ty == 1) & t_known).sum(0)
    t_neg = ((ty == 0) & t_known).sum(0)
    v_pos = ((vy == 1) & v_known).sum(0)
    v_neg = ((vy == 0) & v_known).sum(0)
    reasons: dict[str, str] = {}
    for j, name in enumerate(names):
        if t_pos[j] == 0 or t_neg[j] == 0:
            reasons[name] = (f"training labels are all one class ({int(t_pos[j])} positive, "
                             f"{int(t_neg[j])} negative known)")
        elif v_pos[j] == 0 or v_neg[j] == 0:
            reasons[name] = (f"test labels are all one class ({int(v_pos[j])} positive, "
                             f"{int(v_neg[j])} negative known)")
    train_cols = [j for j in range(c) if t_pos[j] > 0 and t_neg[j] > 0]

    w, b, iterations, loss = _fit(tx, ty, t_known, train_cols, float(weight_decay), max_iter)
    test_scores = vx @ w + b                                          # (T, C')
    auc: dict[str, float] = {nm: float("nan") for nm in names}
    for col, j in enumerate(train_cols):
        if names[j] in reasons:
            continue
        m = v_known[:, j]
        auc[names[j]] = roc_auc(test_scores[m, col], vy[m, j])
    scored = [nm for nm in names if nm not in reasons]
    macro = sum(auc[nm] for nm in scored) / len(scored) if scored else float("nan")
    return {
        "auc": auc,
        "macro_auc": macro,
        "scored": scored,
        "skipped": [nm for nm in names if nm in reasons],
        "skip_reasons": reasons,
        "counts": {nm: {"train_pos": int(t_pos[j]), "train_neg": int(t_neg[j]),
                        "test_pos": int(v_pos[j]), "test_neg": int(v_neg[j])}
                   for j, nm in enumerate(names)},
        "num_train": int(tx.shape[0]),
        "num_test": int(vx.shape[0]),
        "num_features": int(tx.shape[1]),
        "iterations": iterations,
        "train_loss": loss,
    }


def _fit(x: torch.Tensor, y: torch.Tensor, known: torch.Tensor, cols: list[int], weight_decay: float,
         max_iter: int) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """Weights ``(D, C')`` and biases ``(C',)`` of the classes ``cols``, iterations and the final
    objective (sum over classes of mean log-loss plus penalty)."""
    d = x.shape[1]
    if not cols:
        return torch.zeros(d, 0), torch.zeros(0), 0, float("nan")
    targets = torch.nan_to_num(y[:, cols], nan=0.0)
    mask = known[:, cols].to(torch.float32)
    per_class = 1.0 / mask.sum(0)                  # each class's loss is a mean over its labels
    w = torch.zeros(d, len(cols), requires_grad=True)
    # start at the log-odds of the base rate: the optimum when the features say nothing
    rate = ((targets * mask).sum(0) * per_class).clamp(1e-6, 1 - 1e-6)
    b = torch.log(rate / (1 - rate)).detach().requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def objective():
        logits = x @ w + b
        losses = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        return ((losses * mask).sum(0) * per_class).sum() + 0.5 * weight_decay * (w * w).sum()

    def closure():
        opt.zero_grad()
        obj = objective()
        obj.backward()
        return obj

    with torch.enable_grad():
        opt.step(closure)
    iterations = int(opt.state[w].get("n_iter", 0))
    with torch.no_grad():
        loss = float(objective())
    return w.detach(), b.detach(), iterations, loss
