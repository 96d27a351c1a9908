"""Figures of the evaluation: retrieval curves, probe AUCs, training curves, time per step.

Drawn on matplotlib ``Figure`` objects with the Agg canvas (no pyplot, no display, no global
backend switch) and written atomically as PNG.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..utils.checks import check_number
from ..utils.io import atomic_write

__all__ = ["plot_attributes", "plot_probe_auc", "plot_results", "plot_retrieval",
           "plot_step_breakdown", "plot_training_curves", "step_breakdown_bars"]

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")
# the phases of a training step in the order it runs them (medtrim_ext.training.timing.PHASES,
# not imported: this module loads without the training package)
STEP_PARTS = ("data", "encoders_forward", "mining", "loss_forward", "loss_backward",
              "encoders_backward", "optimizer")
TOTAL, OTHER = "total", "other"


def _color(i: int) -> str:
    return _COLORS[i % len(_COLORS)]


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
    return path


def _methods(summary) -> dict:
    if not isinstance(summary, Mapping) or not isinstance(summary.get("methods"), Mapping) \
            or not summary["methods"]:
        raise ValueError("summary must be the output of summarize_runs (with a non-empty 'methods')")
    return summary["methods"]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _missing_bar(ax, x: float, width: float, color: str, top: float = 1.0) -> None:
    """A missing value (metric absent or NaN) at ``x``: an unfilled hatched bar labelled "n/a", so
    it cannot be read as a zero (no bar) or a value."""
    ax.bar([x], [top], width=width, fill=False, hatch="//", edgecolor=color, linewidth=0.6, alpha=0.5)
    ax.text(x, 0.02 * top, "n/a", ha="center", va="bottom", rotation=90, fontsize=7, color=color)


def _bar_errors(errors: list[float]) -> list[float] | None:
    """Error bars of one method's bars: none at all when no bar has a seed spread (a single run),
    else the std (0 where a bar has fewer than two finite seeds)."""
    return [e if _finite(e) else 0.0 for e in errors] if any(_finite(e) for e in errors) else None


def plot_retrieval(summary: Mapping, path: str | Path, metric: str = "precision") -> Path:
    """``metric@K`` over K, one line per method with error bars (std over seeds; none for a
    single run), one panel per direction (rows: i2t, t2i) and relevance (columns: fine, disease,
    then others). The axis runs from 0 to 1, so a flat value looks flat.

    ``metric`` is ``"precision"``, ``"recall"`` or ``"pair_recall"``. A K that a method lacks or
    has NaN at (where another method has it) is marked "n/a" at the bottom, in the method's colour;
    ``ValueError`` when the summary has no such metric.
    """
    return _save(retrieval_figure(summary, metric), path)


def retrieval_figure(summary: Mapping, metric: str = "precision") -> Figure:
    """The figure of :func:`plot_retrieval`, not saved."""
    methods = _methods(summary)
    pattern = re.compile(rf"^(i2t|t2i)/([^/]+)/{re.escape(metric)}@(\d+)$")
    curves: dict = {}   # (direction, relevance) -> method -> [(k, mean, std)]
    panel_ks: dict = {}   # (direction, relevance) -> every K any method has (finite or not)
    for name, info in methods.items():
        for p, st in info["metrics"].items():
            m = pattern.match(p)
            if m:
                panel_ks.setdefault((m.group(1), m.group(2)), set()).add(int(m.group(3)))
            if m and _finite(st["mean"]):
                curves.setdefault((m.group(1), m.group(2)), {}).setdefault(name, []).append(
                    (int(m.group(3)), st["mean"], st["std"]))
    if not curves:
        raise ValueError(f"summary has no finite retrieval {metric}@K metrics (paths like "
                         f"'i2t/fine/{metric}@5')")
    rels = sorted({r for _, r in curves}, key=lambda r: ({"fine": 0, "disease": 1}.get(r, 2), r))
    dirs = [d for d in ("i2t", "t2i") if any(d == dd for dd, _ in curves)]
    fig = Figure(figsize=(4.2 * len(rels), 3.4 * len(dirs)))
    axes = fig.subplots(len(dirs), len(rels), squeeze=False)
    titles = {"i2t": "image → text", "t2i": "text → image"}
    for r_i, d in enumerate(dirs):
        for c_i, rel in enumerate(rels):
            ax = axes[r_i][c_i]
            for m_i, name in enumerate(methods):
                pts = sorted(curves.get((d, rel), {}).get(name, []))
                for k in sorted(panel_ks.get((d, rel), set()) - {p[0] for p in pts}):
                    ax.text(k, 0.02, "n/a", ha="center", va="bottom", rotation=90, fontsize=7,
                            color=_color(m_i))
                if not pts:
                    continue
                # NaN at a missing K breaks the line there instead of bridging the gap
                have = {p[0]: p for p in pts}
                ks = sorted(panel_ks[(d, rel)])
                means = [have[k][1] if k in have else math.nan for k in ks]
                stds = [have[k][2] if k in have else math.nan for k in ks]
                label = f"{name} (n={methods[name]['n_runs']})"
                errors = _bar_errors(list(stds))
                if errors is None:   # one run: a seed spread of 0 would claim a certainty it lacks
                    ax.plot(ks, means, marker="o", color=_color(m_i), label=label)
                else:
                    ax.errorbar(ks, means, yerr=errors, marker="o", capsize=3, color=_color(m_i),
                                label=label)
            ax.set_ylim(0.0, 1.05)
            ax.set_title(f"{titles[d]}, {rel} relevance")
            ax.set_xlabel("K")
            ax.set_ylabel(f"{metric}@K")
            ax.grid(alpha=0.3)
            if ax.has_data():
                ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_attributes(summary: Mapping, path: str | Path, k: int = 5) -> Path:
    """Per attribute kind (side, size, zone) and direction, the share of the top K with the same
    disease and value (``attributes/<dir>/<kind>/same@K``), grouped bars per method with error bars
    over seeds (none for a single run); a second row of panels: the same share among the items
    that have the disease. A missing or NaN value is a hatched "n/a" bar, not a zero.
    ``ValueError`` when the summary has no such metric (data without ground-truth attributes)."""
    return _save(attributes_figure(summary, k), path)


def attributes_figure(summary: Mapping, k: int = 5) -> Figure:
    """The figure of :func:`plot_attributes`, not saved."""
    methods = _methods(summary)
    pattern = re.compile(rf"^attributes/(i2t|t2i)/([^/]+)/(same|same_given_disease)@{k}$")
    kinds: list[str] = []
    for info in methods.values():
        for p in info["metrics"]:
            m = pattern.match(p)
            if m and m.group(2) not in kinds:
                kinds.append(m.group(2))
    if not kinds:
        raise ValueError(f"summary has no per-attribute metrics (paths like 'attributes/i2t/side/same@{k}')")
    titles = {"i2t": "image → text", "t2i": "text → image"}
    stats = {"same": f"same disease and value in the top {k}",
             "same_given_disease": f"same value, among the top {k} with the disease"}
    fig = Figure(figsize=(4.6 * 2, 3.4 * 2))
    axes = fig.subplots(2, 2, squeeze=False)
    width = 0.8 / len(methods)
    for r_i, stat in enumerate(stats):
        for c_i, d in enumerate(("i2t", "t2i")):
            ax = axes[r_i][c_i]
            for m_i, (name, info) in enumerate(methods.items()):
                xs, hs, es = [], [], []
                for g_i, kind in enumerate(kinds):
                    st = info["metrics"].get(f"attributes/{d}/{kind}/{stat}@{k}")
                    x = g_i + (m_i - (len(methods) - 1) / 2) * width
                    if st and _finite(st["mean"]):
                        xs.append(x)
                        hs.append(st["mean"])
                        es.append(st["std"])
                    else:
                        _missing_bar(ax, x, width, _color(m_i))
                if xs:
                    ax.bar(xs, hs, width=width, yerr=_bar_errors(es), capsize=2, color=_color(m_i),
                           label=name)
            ax.set_xticks(range(len(kinds)))
            ax.set_xticklabels(kinds)
            ax.set_ylim(0, 1)
            ax.set_title(f"{titles[d]}: {stats[stat]}", fontsize=9)
            ax.grid(alpha=0.3, axis="y")
            if ax.has_data():
                ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_probe_auc(summary: Mapping, path: str | Path) -> Path:
    """Test AUC of the linear probe per class (and the macro mean), grouped bars per method with
    error bars over seeds (none for a single run). A class whose AUC a method lacks or has as NaN
    (e.g. not scorable on its test split) gets a hatched "n/a" bar, not a zero. ``ValueError`` when
    the summary has no ``probe/auc/<class>`` metric."""
    return _save(probe_auc_figure(summary), path)


def probe_auc_figure(summary: Mapping) -> Figure:
    """The figure of :func:`plot_probe_auc`, not saved."""
    methods = _methods(summary)
    classes: list[str] = []
    for info in methods.values():
        for p in info["metrics"]:
            if p.startswith("probe/auc/") and p[len("probe/auc/"):] not in classes:
                classes.append(p[len("probe/auc/"):])
    if not classes:
        raise ValueError("summary has no linear-probe AUCs (paths like 'probe/auc/<class>')")
    groups = classes + ["macro"]
    paths = [f"probe/auc/{c}" for c in classes] + ["probe/macro_auc"]
    width = 0.8 / len(methods)
    fig = Figure(figsize=(max(6.0, 0.55 * len(groups) * max(1, len(methods)) + 2), 4.2))
    ax = fig.subplots()
    drawn, missing = False, []
    for m_i, (name, info) in enumerate(methods.items()):
        xs, hs, es = [], [], []
        for g_i, p in enumerate(paths):
            st = info["metrics"].get(p)
            x = g_i + (m_i - (len(methods) - 1) / 2) * width
            if st and _finite(st["mean"]):
                xs.append(x)
                hs.append(st["mean"])
                es.append(st["std"])
            else:
                missing.append((x, _color(m_i)))
        if xs:
            drawn = True
            ax.bar(xs, hs, width=width, yerr=_bar_errors(es), capsize=2, color=_color(m_i),
                   label=f"{name} (n={info['n_runs']})")
    if not drawn:
        raise ValueError("every linear-probe AUC in the summary is NaN: nothing to plot")
    for x, color in missing:
        _missing_bar(ax, x, width, color)
    ax.axhline(0.5, color="black", lw=0.8, ls="--", label="chance")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=40, ha="right", fontsize=8)
    ax.set_ylim(0.0, 1.0)
    ax.set_ylabel("test ROC AUC")
    ax.set_title("Linear probe (one-vs-rest logistic regression)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


RESULT_PLOTS = {"retrieval": "retrieval.png", "probe_auc": "probe_auc.png",
                "attributes": "attributes.png"}


def plot_results(summary: Mapping, out_dir: str | Path) -> dict[str, Path]:
    """The figures of an evaluation summary (:func:`~medtrim_ext.evaluation.summarize_runs`) in
    ``out_dir``: ``retrieval.png`` (:func:`plot_retrieval`), ``probe_auc.png``
    (:func:`plot_probe_auc`) and ``attributes.png`` (:func:`plot_attributes`). A figure whose
    metrics the summary does not have (no probe, no ground-truth attributes) is left out.
    Returns ``{name: path}`` of the figures written."""
    _methods(summary)   # a malformed summary is an error, not a figure to skip
    out = Path(out_dir)
    drawers = {"retrieval": plot_retrieval, "probe_auc": plot_probe_auc, "attributes": plot_attributes}
    written = {}
    for name, draw in drawers.items():
        try:
            written[name] = draw(summary, out / RESULT_PLOTS[name])
        except ValueError:   # the summary has nothing to draw in this figure
            continue
    return written


def _read_curve(path: Path, metric: str, step_column: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one training CSV; rows with an empty or non-finite value are skipped
    (e.g. evaluation-only rows)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            for col in (step_column, metric):
                if col not in fields:
                    raise ValueError(f"training log {str(path)!r} has no column {col!r} "
                                     f"(columns: {fields})")
            steps, values = [], []
            for lineno, row in enumerate(reader, 2):
                raw_s, raw_v = row.get(step_column), row.get(metric)
                if raw_v is None or not raw_v.strip():
                    continue
                try:
                    s, v = float(raw_s), float(raw_v)
                except (TypeError, ValueError):
                    raise ValueError(f"{path}:{lineno}: {step_column}={raw_s!r}, {metric}={raw_v!r} "
                                     f"are not numbers") from None
                if math.isfinite(s) and math.isfinite(v):
                    steps.append(s)
                    values.append(v)
    except OSError as exc:
        raise ValueError(f"cannot read training log {str(path)!r}: {exc}") from None
    return steps, values


def plot_training_curves(csv_paths_by_method_and_seed: Mapping[str, Mapping | Sequence],
                         path: str | Path, metric: str = "loss", *, step_column: str = "step",
                         log_y: bool | None = None) -> Path:
    """``metric`` against ``step_column`` for every run, one colour per method, one line per
    seed.

    ``csv_paths_by_method_and_seed``: ``{method: {seed: csv_path}}`` or ``{method: [csv_path,
    ...]}``. Rows whose ``metric`` is empty or not finite are skipped. ``ValueError`` naming the
    file when it is missing, lacks a column or has no finite value. ``log_y`` defaults to a log
    axis when all values are positive and span more than a factor of 20.
    """
    if not isinstance(csv_paths_by_method_and_seed, Mapping) or not csv_paths_by_method_and_seed:
        raise ValueError("csv_paths_by_method_and_seed must be a non-empty dict {method: {seed: path}}")
    runs = []   # (method index, method, seed label, steps, values)
    for m_i, (method, per_seed) in enumerate(csv_paths_by_method_and_seed.items()):
        if isinstance(per_seed, Mapping):
            items = list(per_seed.items())
        elif isinstance(per_seed, (str, Path)) or not isinstance(per_seed, Sequence):
            raise TypeError(f"csv_paths_by_method_and_seed[{method!r}] must be a dict {{seed: path}} "
                            f"or a list of paths")
        else:
            items = list(enumerate(per_seed))
        if not items:
            raise ValueError(f"csv_paths_by_method_and_seed[{method!r}] lists no files")
        for seed, p in items:
            steps, values = _read_curve(Path(p), metric, step_column)
            if not values:
                raise ValueError(f"training log {str(p)!r} has no finite {metric!r} values")
            runs.append((m_i, method, seed, steps, values))
    every = [v for *_, vals in runs for v in vals]
    if log_y is None:
        log_y = min(every) > 0 and max(every) / min(every) > 20
    fig = Figure(figsize=(7.0, 4.2))
    ax = fig.subplots()
    labelled = set()
    for m_i, method, seed, steps, values in runs:
        label = None if method in labelled else method
        labelled.add(method)
        ax.plot(steps, values, color=_color(m_i), lw=1.0, alpha=0.8, label=label)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(step_column)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} during training ({len(runs)} runs)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def _check_breakdown(name: str, parts) -> dict[str, float]:
    if not isinstance(parts, Mapping) or not parts:
        raise ValueError(f"{name} must be a non-empty dict {{part: seconds}}")
    out = {str(k): check_number(f"{name}[{k!r}] (seconds)", v, minimum=0) for k, v in parts.items()}
    total = out.pop(TOTAL, None)   # the whole step, not a part of it
    if not out:
        raise ValueError(f"{name} has no parts besides {TOTAL!r}")
    covered = sum(out.values())
    if total is not None and total > covered * (1 + 1e-3) + 1e-9:
        out[OTHER] = total - covered   # time outside the timed phases
    if sum(out.values()) <= 0:
        raise ValueError(f"{name} has no time in it (all parts are 0)")
    return out


def step_breakdown_bars(breakdown: Mapping[str, float] | Mapping[str, Mapping[str, float]]
                        ) -> tuple[dict[str, dict[str, float]], list[str]]:
    """The data of :func:`plot_step_breakdown`: ``({bar: {part: seconds}}, parts in drawing
    order)``.

    One bar per method (or ``"step"`` for a single ``{part: seconds}``). A ``"total"`` entry is
    not a part: when it exceeds the sum of the parts, the difference becomes an ``"other"`` part,
    so a bar is never longer than the step. Parts are ordered as the training step runs them
    (:data:`STEP_PARTS`), then unknown parts in the order first seen, then ``"other"``.
    """
    if not isinstance(breakdown, Mapping) or not breakdown:
        raise ValueError("breakdown must be a non-empty dict {part: seconds} or {method: {part: seconds}}")
    if all(isinstance(v, Mapping) for v in breakdown.values()):
        bars = {str(m): _check_breakdown(f"breakdown[{m!r}]", v) for m, v in breakdown.items()}
    elif any(isinstance(v, Mapping) for v in breakdown.values()):
        raise ValueError("breakdown mixes seconds and per-method dicts")
    else:
        bars = {"step": _check_breakdown("breakdown", breakdown)}
    seen = list(dict.fromkeys(p for b in bars.values() for p in b))
    parts = [p for p in STEP_PARTS if p in seen]
    parts += [p for p in seen if p not in STEP_PARTS and p != OTHER]
    parts += [OTHER] if OTHER in seen else []
    return bars, parts


def plot_step_breakdown(breakdown: Mapping[str, float] | Mapping[str, Mapping[str, float]],
                        path: str | Path) -> Path:
    """Seconds per training step split into parts (the phases of
    :class:`~medtrim_ext.training.timing.StepTimer`: data, encoders_forward, mining, loss_forward,
    loss_backward, encoders_backward, optimizer) as horizontal stacked bars, labelled with
    milliseconds and shares.

    ``breakdown`` is ``{part: seconds}`` for one run, or ``{method: {part: seconds}}`` for one
    bar per method, e.g. the ``step_time`` of each run's ``train_summary.json``. See
    :func:`step_breakdown_bars` for the order of the parts and how ``"total"`` is treated.
    """
    bars, parts = step_breakdown_bars(breakdown)
    fig = Figure(figsize=(8.0, 1.3 + 0.6 * len(bars)))
    ax = fig.subplots()
    names = list(bars)
    ms = {n: {p: 1e3 * v for p, v in b.items()} for n, b in bars.items()}   # drawn in milliseconds
    for p_i, part in enumerate(parts):
        lefts = [sum(ms[n].get(q, 0.0) for q in parts[:p_i]) for n in names]
        widths = [ms[n].get(part, 0.0) for n in names]
        color = "#bbbbbb" if part == OTHER else _color(p_i)
        ax.barh(range(len(names)), widths, left=lefts, color=color, label=part)
        for y, (left, w, n) in enumerate(zip(lefts, widths, names)):
            total = sum(ms[n].values())
            if w / total >= 0.06:   # label only segments wide enough to hold text
                ax.text(left + w / 2, y, f"{w:.3g} ms\n{100 * w / total:.0f}%", ha="center",
                        va="center", fontsize=7, color="white")
    for y, n in enumerate(names):
        total = sum(ms[n].values())
        ax.text(total, y, f"  {total:.4g} ms", va="center", fontsize=8)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names)
    ax.invert_yaxis()
    ax.set_xlabel("milliseconds per step")
    ax.set_title("Time per training step")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.margins(x=0.12)
    fig.tight_layout()
    return _save(fig, path)
