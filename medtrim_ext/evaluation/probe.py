"""Linear probe: one-vs-rest logistic regression on frozen embeddings, scored by ROC AUC.

Both are scikit-learn's (``LogisticRegression``, ``roc_auc_score``): the "linear probe AUC" readers
of the paper expect. This module only checks the input, standardises the features, handles unknown
labels and classes that cannot be scored, maps the penalty and picks the solver (see
:func:`linear_probe`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from ..utils.checks import check_int, check_number
from .retrieval import _check_embeddings

# scikit-learn is imported where it is used: loading it takes about a second, which everything
# that imports medtrim_ext.evaluation (keys, plots, reports) would otherwise pay
if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

__all__ = ["linear_probe", "roc_auc"]

# the solver stops when the largest gradient entry of the (mean-loss) objective is below this:
# tight enough that the AUCs are those of the optimum, not of where the solver stopped (at 1e-6 rare
# classes moved by up to 2e-4)
TOL = 1e-8
# Newton steps with a Cholesky solve of the (D x D) Hessian: trained embeddings are badly
# conditioned (a short demo run's standardised features have singular values from about 150 down
# to 0.06), where L-BFGS needed 150-300 iterations per class and stopped unconverged at 200
# (a ConvergenceWarning per class); Newton reaches the same optimum (objective equal to 1e-9) in
# 5-7 iterations, about 7x faster. Its cost grows as D^3, fine for embeddings of a few thousand
# dimensions at most.
SOLVER = "newton-cholesky"


def _as_1d(name: str, x) -> np.ndarray:
    """``x`` (tensor, array or list) as a 1-D float64 array."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    elif isinstance(x, (list, tuple)):
        x = torch.tensor(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, array or list, got {type(x).__name__}")
    if x.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(x.shape)}")
    return x.detach().cpu().to(torch.float64).numpy()


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (1 = positive):
    :func:`sklearn.metrics.roc_auc_score`.

    It equals the Mann-Whitney U statistic: the probability that a random positive scores higher
    than a random negative, ties counting one half. NaN (where scikit-learn raises) when only one
    class is present. ``scores`` must be finite; ``labels`` 0/1 (bool, int or float).
    """
    s = _as_1d("scores", scores)
    y = _as_1d("labels", labels)
    if s.shape != y.shape:
        raise ValueError(f"scores has {s.size} entries but labels has {y.size}")
    if not np.isfinite(s).all():
        raise ValueError("scores contains NaN or infinite values")
    if not ((y == 0) | (y == 1)).all():
        raise ValueError("labels must be 0 or 1 (drop unknown labels before calling roc_auc)")
    if np.unique(y).size < 2:
        return float("nan")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s))


def _as_tensor(name: str, x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    return x


def _features(name: str, x) -> np.ndarray:
    """A finite, non-empty 2-D float tensor or array, as float64 numpy (scikit-learn's dtype)."""
    x = _as_tensor(name, x)
    if not x.is_floating_point():   # the probe's own wording, checked before the shared checks
        raise TypeError(f"{name} must be floating point, got {x.dtype}")
    x = _check_embeddings(name, x)
    return x.detach().cpu().to(torch.float64).numpy()


def _labels(name: str, y, n: int, c: int) -> np.ndarray:
    """``(n, c)`` labels 0, 1 or NaN (unknown), as float64 numpy."""
    y = _as_tensor(name, y)
    if tuple(y.shape) != (n, c):
        raise ValueError(f"{name} must have shape ({n}, {c}) (samples, classes), got {tuple(y.shape)}")
    y = y.detach().cpu().to(torch.float64).numpy()
    known = y[~np.isnan(y)]
    if not ((known == 0) | (known == 1)).all():
        raise ValueError(f"{name} must hold 0, 1 or NaN (unknown)")
    return y


def _class_names(class_names) -> list[str]:
    if isinstance(class_names, str) or not isinstance(class_names, Sequence):
        raise TypeError("class_names must be a sequence of names")
    names = list(class_names)
    if not names or not all(isinstance(c, str) and c for c in names):
        raise ValueError("class_names must be non-empty strings, at least one")
    if len(set(names)) != len(names):
        raise ValueError(f"class_names has duplicates: {sorted({c for c in names if names.count(c) > 1})}")
    return names


def _fit_class(x: np.ndarray, y: np.ndarray, weight_decay: float, max_iter: int,
               solver: str = SOLVER) -> LogisticRegression:
    """The logistic regression minimising ``mean log-loss + weight_decay / 2 * ||w||^2`` (bias not
    penalised) on the rows with a known label.

    scikit-learn minimises ``C * sum log-loss + 1/2 * ||w||^2`` (its L-BFGS and Newton-Cholesky
    solvers leave the intercept unpenalised too): the same minimiser for ``C = 1 / (n * weight_decay)``, n the
    number of known labels; ``weight_decay = 0`` is ``C = inf`` (no penalty).
    """
    from sklearn.linear_model import LogisticRegression

    known = ~np.isnan(y)
    n = int(known.sum())
    c = 1.0 / (n * weight_decay) if weight_decay > 0 else np.inf
    return LogisticRegression(C=c, tol=TOL, max_iter=max_iter, solver=solver).fit(x[known], y[known])


def _objective(model: LogisticRegression, x: np.ndarray, y: np.ndarray, weight_decay: float) -> float:
    """``mean log-loss + weight_decay / 2 * ||w||^2`` of ``model`` on the known labels (the
    reported ``train_loss``; log(1 + e^z) - y z without overflow)."""
    known = ~np.isnan(y)
    z = model.decision_function(x[known])
    w = model.coef_.ravel()
    return float(np.mean(np.logaddexp(0.0, z) - y[known] * z) + 0.5 * weight_decay * (w @ w))


def linear_probe(train_x, train_y, test_x, test_y, class_names: Sequence[str], *,
                 weight_decay: float = 1e-3, max_iter: int = 200, standardize: bool = True,
                 solver: str = SOLVER) -> dict:
    """Fit one logistic regression per class on ``train_x`` and report test ROC AUC.

    Args:
        train_x ``(N, D)``, test_x ``(T, D)``: float features (frozen embeddings), tensors or
            arrays.
        train_y ``(N, C)``, test_y ``(T, C)``: labels 0/1, NaN = unknown (ignored for that class
            only, in training and in scoring).
        class_names: C unique names, the columns of the labels.
        weight_decay: L2 penalty ``weight_decay / 2 * ||w_c||^2`` added to each class's mean
            log-loss (the bias is not penalised); scikit-learn's ``C = 1 / (n_c * weight_decay)``
            with ``n_c`` the class's known training labels.
        max_iter: solver iterations per class (zero start: the result is deterministic).
            Stopping at the limit warns (``ConvergenceWarning``); Newton-Cholesky needs about 5-10.
        standardize: scale features to zero mean, unit variance with the statistics of all
            training rows (``StandardScaler``; constant features are left unscaled).
        solver: scikit-learn's ``LogisticRegression`` solver, stopping at ``tol=1e-8`` on the
            largest gradient entry; ``"newton-cholesky"`` (default) converges on badly
            conditioned embeddings where ``"lbfgs"`` (scikit-learn's default) stops at
            ``max_iter``; both reach the same optimum where they converge.

    Returns::

        {"auc": {class: test AUC or NaN}, "macro_auc": mean AUC of the scored classes (NaN if
         none), "scored": [classes], "skipped": [classes], "skip_reasons": {class: why},
         "counts": {class: {"train_pos", "train_neg", "test_pos", "test_neg"}},
         "num_train", "num_test", "num_features", "iterations" (the most any class took),
         "train_loss" (sum over the fitted classes of their objective)}

    A class is skipped (not scored, AUC NaN) when its known training labels or its known test
    labels are all of one class.
    """
    tx = _features("train_x", train_x)
    vx = _features("test_x", test_x)
    if tx.shape[1] != vx.shape[1]:
        raise ValueError(f"train_x has {tx.shape[1]} features but test_x has {vx.shape[1]}")
    names = _class_names(class_names)
    ty = _labels("train_y", train_y, tx.shape[0], len(names))
    vy = _labels("test_y", test_y, vx.shape[0], len(names))
    weight_decay = check_number("weight_decay", weight_decay, minimum=0)
    max_iter = check_int("max_iter", max_iter)
    if solver not in ("newton-cholesky", "lbfgs"):   # the two that leave the intercept unpenalised
        raise ValueError(f"solver must be 'newton-cholesky' or 'lbfgs', got {solver!r}")

    if standardize:
        from sklearn.preprocessing import StandardScaler

        scaler = StandardScaler().fit(tx)
        tx, vx = scaler.transform(tx), scaler.transform(vx)

    t_pos, t_neg = (ty == 1).sum(0), (ty == 0).sum(0)     # NaN compares unequal to both
    v_pos, v_neg = (vy == 1).sum(0), (vy == 0).sum(0)
    reasons: dict[str, str] = {}
    for j, name in enumerate(names):
        if t_pos[j] == 0 or t_neg[j] == 0:
            reasons[name] = (f"training labels are all one class ({int(t_pos[j])} positive, "
                             f"{int(t_neg[j])} negative known)")
        elif v_pos[j] == 0 or v_neg[j] == 0:
            reasons[name] = (f"test labels are all one class ({int(v_pos[j])} positive, "
                             f"{int(v_neg[j])} negative known)")

    auc: dict[str, float] = {nm: float("nan") for nm in names}
    iterations, loss = 0, 0.0
    fitted = [j for j in range(len(names)) if t_pos[j] > 0 and t_neg[j] > 0]
    for j in fitted:
        model = _fit_class(tx, ty[:, j], weight_decay, max_iter, solver)
        iterations = max(iterations, int(model.n_iter_.max()))
        loss += _objective(model, tx, ty[:, j], weight_decay)
        if names[j] not in reasons:
            known = ~np.isnan(vy[:, j])
            auc[names[j]] = roc_auc(model.decision_function(vx[known]), vy[known, j])
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
        "train_loss": loss if fitted else float("nan"),
    }
