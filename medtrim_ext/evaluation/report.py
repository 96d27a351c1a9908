"""Results over seeds: summary statistics, a markdown table with honest comparisons, files."""

from __future__ import annotations

import json
import math
import re
import warnings
from itertools import combinations
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..utils.io import atomic_write

__all__ = ["CollapseWarning", "collapse_alarms", "key_metrics", "flatten_metrics", "results_markdown",
           "summarize_runs", "write_results"]

SEP = "/"


def _scalar(value: Any) -> float | None:
    """The number in ``value`` (Python, numpy or 0-d tensor), None for anything else (and bools)."""
    if isinstance(value, bool) or isinstance(value, np.bool_):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dim() == 0 \
            and value.dtype != torch.bool and not value.is_complex():
        return float(value.item())
    return None


def flatten_metrics(result: Mapping, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a nested result dict as ``{"i2t/fine/precision@5": value}``.

    Non-numeric leaves (strings, lists such as ``clamped_ks``, bools) are left out; ``None``
    counts as a missing value (NaN). Keys are joined with ``/``.
    """
    out: dict[str, float] = {}
    for key, value in result.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, path + SEP))
        elif value is None:
            out[path] = float("nan")
        else:
            x = _scalar(value)
            if x is not None:
                out[path] = x
    return out


def summarize_runs(runs: Mapping[str, Sequence[Mapping]]) -> dict:
    """Mean, standard deviation and count over seeds of every metric, per method.

    ``runs`` maps a method name to its per-seed result dicts (``evaluate_retrieval`` output,
    plus ``{"probe": linear_probe(...)}`` and any scalar extras; a scalar ``"seed"`` entry is
    used to pair seeds across methods). Returns::

        {"methods": {method: {"n_runs": int, "seeds": [seed per run] or None,
                              "metrics": {path: {"mean", "std", "n", "n_missing", "values"}}}}}

    ``values`` has one entry per run (NaN where the run lacks the metric or it is NaN); ``mean``
    and ``std`` (sample standard deviation, ddof 1) use the ``n`` finite values only; ``std`` is
    NaN with fewer than two, ``mean`` NaN with none. ``n_missing`` counts the others.
    """
    if not isinstance(runs, Mapping) or not runs:
        raise ValueError("runs must be a non-empty dict {method: [result dict per seed]}")
    methods: dict = {}
    for method, results in runs.items():
        if not isinstance(method, str) or not method:
            raise TypeError(f"method names must be non-empty strings, got {method!r}")
        if isinstance(results, Mapping) or not isinstance(results, Sequence) or not results:
            raise ValueError(f"runs[{method!r}] must be a non-empty list of result dicts (one per seed)")
        flat = []
        for i, r in enumerate(results):
            if not isinstance(r, Mapping):
                raise TypeError(f"runs[{method!r}][{i}] must be a dict, got {type(r).__name__}")
            flat.append(flatten_metrics(r))
        seeds = [_scalar(r.get("seed")) for r in results]
        seeds = [int(s) if s is not None and float(s).is_integer() else s for s in seeds]
        paths = sorted({p for f in flat for p in f} - {"seed"})
        metrics = {}
        for p in paths:
            values = [f.get(p, float("nan")) for f in flat]
            finite = [v for v in values if math.isfinite(v)]
            n = len(finite)
            mean = float(np.mean(finite)) if n else float("nan")
            std = float(np.std(finite, ddof=1)) if n > 1 else float("nan")
            metrics[p] = {"mean": mean, "std": std, "n": n, "n_missing": len(values) - n, "values": values}
        methods[method] = {"n_runs": len(results),
                           "seeds": seeds if all(s is not None for s in seeds) else None,
                           "metrics": metrics}
    return {"methods": methods}


# -- markdown ---------------------------------------------------------------------------------

def key_metrics(paths: Sequence[str]) -> list[str]:
    """The headline metrics among ``paths``, in table order: fine-grained then disease-level
    relevance, image-to-text then text-to-image, precision@K then recall@K by K and mAP; then
    the own-pair recall per direction, the graded nDCG@10 per direction and the linear probe's
    macro AUC."""
    paths = set(paths)
    ks = sorted({int(m.group(1)) for p in paths for m in [re.search(r"(?:precision|recall)@(\d+)$", p)] if m})
    out = []
    for rel in ("fine", "disease"):
        for direction in ("i2t", "t2i"):
            for stat in ("precision", "recall"):
                out += [f"{direction}/{rel}/{stat}@{k}" for k in ks]
            out.append(f"{direction}/{rel}/mAP")
    # the own-pair recall does not depend on the relevance; show it once per direction
    for direction in ("i2t", "t2i"):
        rel = next((r for r in ("fine", "disease")
                    if any(p.startswith(f"{direction}/{r}/pair_recall@") for p in paths)), "fine")
        out += [f"{direction}/{rel}/pair_recall@{k}" for k in ks]
    # the graded ranking by meta-entity score (relevance-free: under "graded")
    out += [f"{direction}/graded/ndcg@10" for direction in ("i2t", "t2i")]
    out.append("probe/macro_auc")
    return [p for p in out if p in paths]


def _higher_is_better(path: str) -> bool:
    leaf = path.rsplit(SEP, 1)[-1].lower()
    return bool(re.match(r"(precision|recall|pair_recall)@\d+$|map$|macro_auc$", leaf)) or \
        path.lower().startswith(f"probe{SEP}auc{SEP}")


def _fmt(x: float) -> str:
    if not math.isfinite(x):
        return "n/a"
    return f"{x:.4f}" if abs(x) < 100 else f"{x:.4g}"


_LABEL_MATCH = re.compile(rf"^(?:i2t|t2i){SEP}disease{SEP}precision@(\d+)$")


def _row_name(path: str) -> str:
    """A table row's name: the results.json path in backticks, plus the field's name where it has
    one (the ``disease`` key's precision@K is the label-match P@K of MedCLIP, GLoRIA, CXR-CLIP)."""
    m = _LABEL_MATCH.match(path)
    return f"`{path}` = label-match P@{m.group(1)}" if m else f"`{path}`"


def _cell(stats: Mapping | None) -> str:
    if stats is None or stats["n"] == 0:
        return "n/a"
    if stats["n"] == 1:
        return f"{_fmt(stats['mean'])} (1 seed)"
    return f"{_fmt(stats['mean'])} ± {_fmt(stats['std'])} ({stats['n']} seeds)"


def _paired(summary: dict, a: str, b: str, path: str) -> tuple[int, int] | None:
    """(runs where a > b, pairs) over runs paired by seed, or by position when neither method
    records seeds and both have the same number of runs; None when no pairing is possible."""
    ma, mb = summary["methods"][a], summary["methods"][b]
    va, vb = ma["metrics"][path]["values"], mb["metrics"][path]["values"]
    if ma["seeds"] is not None and mb["seeds"] is not None:
        ia = {s: v for s, v in zip(ma["seeds"], va)}
        pairs = [(ia[s], v) for s, v in zip(mb["seeds"], vb) if s in ia]
    elif ma["seeds"] is None and mb["seeds"] is None and len(va) == len(vb):
        pairs = list(zip(va, vb))
    else:
        return None
    pairs = [(x, y) for x, y in pairs if math.isfinite(x) and math.isfinite(y)]
    if not pairs:
        return None
    return sum(x > y for x, y in pairs), len(pairs)


def _comparison(summary: dict, a: str, b: str, path: str) -> str | None:
    """One row of the comparison table, or None when a method lacks the metric."""
    sa, sb = (summary["methods"][m]["metrics"].get(path) for m in (a, b))
    if sa is None or sb is None or sa["n"] == 0 or sb["n"] == 0:
        return None
    diff = sa["mean"] - sb["mean"]
    if diff < 0:
        a, b, sa, sb, diff = b, a, sb, sa, -diff
    if diff == 0:
        who = f"{a} and {b} tie"
    else:
        who = f"{a} {'ahead of' if _higher_is_better(path) else 'higher than'} {b}"
    if sa["n"] > 1 and sb["n"] > 1:
        spread = math.sqrt(sa["std"] ** 2 + sb["std"] ** 2)
        verdict = "gap exceeds spread" if diff > spread else "within spread"
        spread_s = _fmt(spread)
    else:
        verdict, spread_s = "spread unknown (single seed)", "n/a"
    paired = _paired(summary, a, b, path)
    paired_s = f"{a} higher in {paired[0]} of {paired[1]}" if paired is not None else "n/a"
    return f"| {_row_name(path)} | {who} | {_fmt(diff)} | {spread_s} | {verdict} | {paired_s} |"


class CollapseWarning(UserWarning):
    """:func:`results_markdown`: an evaluation's top-K lists look collapsed (the rule of
    :func:`medtrim_ext.evaluation.attributes.collapse_reasons`), so its retrieval metrics measure
    a near-constant ranking."""


_HUB_DISTINCT = re.compile(rf"^attributes{SEP}(i2t|t2i){SEP}hub{SEP}distinct@(\d+)$")


def _run_values(info: Mapping, path: str) -> list[float]:
    st = info["metrics"].get(path)
    return list(st["values"]) if st else [float("nan")] * info["n_runs"]


def _runs_label(info: Mapping, runs: list[int]) -> str:
    if info["seeds"] is not None:
        return ("seed " if len(runs) == 1 else "seeds ") + ", ".join(str(info["seeds"][i]) for i in runs)
    return ("run " if len(runs) == 1 else "runs ") + ", ".join(str(i + 1) for i in runs)


def _collapse_section(summary: Mapping) -> tuple[list[str], list[str]]:
    """Markdown lines of the collapse diagnostic (per direction: distinct items in any top K and
    the hub share, per run) and the warnings that fire (``"who: why"``); empty without the hub
    diagnostic (``attributes/<dir>/hub/distinct@K``)."""
    from .attributes import COLLAPSE_DISTINCT_FACTOR, COLLAPSE_HUB_SHARE, COLLAPSE_MIN_GALLERY_FACTOR
    from .attributes import collapse_reasons

    methods = summary["methods"]
    found = sorted({(m.group(1), int(m.group(2))) for info in methods.values() for p in info["metrics"]
                    for m in [_HUB_DISTINCT.match(p)] if m})
    if not found:
        return [], []

    def cells(values, fmt):
        return ", ".join(fmt.format(v) if math.isfinite(v) else "n/a" for v in values)

    lines = ["", f"Collapse diagnostic, per run: the distinct items in the top K of all queries, and the "
                 f"hub share (the share of queries whose top K holds the single most retrieved item). "
                 f"A collapse fires when the distinct items are at most {COLLAPSE_DISTINCT_FACTOR}K or the "
                 f"hub share exceeds {COLLAPSE_HUB_SHARE:.0%} (galleries of at least "
                 f"{COLLAPSE_MIN_GALLERY_FACTOR}K items): the ranking then ignores the query.", "",
             "| diagnostic | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    alarms = []
    for d, k in found:
        per = {}
        for name, info in methods.items():
            gallery = _run_values(info, f"attributes{SEP}{d}{SEP}hub{SEP}gallery_size")
            evaluated = _run_values(info, "num_samples")     # results made before gallery_size
            gallery = [g if math.isfinite(g) else e for g, e in zip(gallery, evaluated)]
            per[name] = (_run_values(info, f"attributes{SEP}{d}{SEP}hub{SEP}distinct@{k}"),
                         _run_values(info, f"attributes{SEP}{d}{SEP}hub{SEP}hub_share@{k}"), gallery)
        sizes = {g for _, _, gs in per.values() for g in gs if math.isfinite(g)}
        of = f" (of {sizes.pop():.0f})" if len(sizes) == 1 else ""
        lines.append(f"| `{d}` distinct items in any top {k}{of} | " +
                     " | ".join(cells(per[n][0], "{:.0f}") for n in methods) + " |")
        lines.append(f"| `{d}` hub share: queries whose top {k} holds the most retrieved item | " +
                     " | ".join(cells(per[n][1], "{:.3f}") for n in methods) + " |")
        for name, (distinct, share, gallery) in per.items():
            groups: dict[str, list[int]] = {}
            for i, (x, h, g) in enumerate(zip(distinct, share, gallery)):
                why = collapse_reasons(x, h, k, g)
                if why:
                    groups.setdefault("; ".join(why), []).append(i)
            for why, runs in groups.items():
                alarms.append(f"{name} {d}, {_runs_label(methods[name], runs)}: {why}")
    for alarm in alarms:
        lines += ["", f"**Collapse warning** ({alarm.replace(': ', '): ', 1)}. Its retrieval metrics "
                      f"measure a near-constant ranking, not how well it matches the query."]
    return lines, alarms


def collapse_alarms(summary: Mapping) -> list[str]:
    """The runs whose retrieval looks collapsed (the collapse diagnostic of
    :func:`results_markdown`), as ``"method direction, seed(s) ...: why"``; empty when none or
    without the hub diagnostic."""
    return _collapse_section(summary)[1]


def results_markdown(summary: Mapping, metrics: Sequence[str] | None = None) -> str:
    """A markdown report of :func:`summarize_runs` output: a table (rows = metrics, columns =
    methods, cells ``mean ± std (n seeds)``) and a comparison table with one row per metric and
    pair of methods.

    ``metrics`` picks the rows (flattened paths, in order); by default the headline metrics
    (:func:`key_metrics`), or every metric when none of those is present. A comparison says which
    method is ahead (for metrics where higher is better; otherwise "higher"), whether the
    difference of means exceeds the combined seed spread ``sqrt(std_a^2 + std_b^2)`` (a rough
    yardstick, not a significance test) and, when seeds can be paired, in how many paired seeds
    the leading method was higher.

    Beside the metrics, where the summary has the hub diagnostic
    (:func:`~medtrim_ext.evaluation.attributes.hub_diagnostic`), a collapse diagnostic per run;
    each run whose top-K lists look collapsed gets a warning line and a :class:`CollapseWarning`.
    """
    if not isinstance(summary, Mapping) or not isinstance(summary.get("methods"), Mapping) \
            or not summary["methods"]:
        raise ValueError("summary must be the output of summarize_runs (with a non-empty 'methods')")
    methods = list(summary["methods"])
    all_paths = sorted({p for m in methods for p in summary["methods"][m]["metrics"]})
    if metrics is None:
        rows = key_metrics(all_paths) or all_paths
    else:
        if isinstance(metrics, str):
            raise TypeError("metrics must be a list of metric paths, not a string")
        rows = list(metrics)
        unknown = [p for p in rows if p not in all_paths]
        if unknown:
            raise ValueError(f"metrics not in the summary: {unknown}")
    if not rows:
        raise ValueError("the summary has no metrics to report")
    runs = ", ".join(f"{m}: {summary['methods'][m]['n_runs']}" for m in methods)
    lines = [f"Runs per method: {runs}. Cells: mean ± sample std over seeds.", ""]
    if any(_LABEL_MATCH.match(p) for p in rows):
        lines += ["Label-match P@K (`disease/precision@K`): the share of the top K whose disease set "
                  "equals the query's, the CheXpert 5x200-style precision of MedCLIP, GLoRIA and "
                  "CXR-CLIP.", ""]
    lines += ["| metric | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for p in rows:
        cells = [_cell(summary["methods"][m]["metrics"].get(p)) for m in methods]
        lines.append(f"| {_row_name(p)} | " + " | ".join(cells) + " |")
    collapse, alarms = _collapse_section(summary)
    lines += collapse
    for alarm in alarms:
        # stacklevel 1: one location for every caller of the report
        warnings.warn(f"retrieval collapse: {alarm}", CollapseWarning)
    if len(methods) > 1:
        lines += ["", "Comparisons. Gap: difference of the means. Seed spread: sqrt(std_a² + std_b²) "
                      "of the two methods; a gap beyond it is a rough yardstick, not a significance "
                      "test. Paired seeds: runs with the same seed (or position, when no seeds are recorded), "
                      "in how many the leader was higher.", "",
                  "| metric | comparison | gap | seed spread | verdict | paired seeds |",
                  "|---|---|---|---|---|---|"]
        for p in rows:
            for a, b in combinations(methods, 2):
                line = _comparison(summary, a, b, p)
                if line:
                    lines.append(line)
    hidden = len(all_paths) - len(rows)
    if hidden > 0:
        lines += ["", f"{hidden} further metrics are in results.json."]
    return "\n".join(lines) + "\n"


# -- files ------------------------------------------------------------------------------------

def _jsonable(value: Any) -> Any:
    """Plain JSON values: tensors and arrays to lists, NaN and infinities to null."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.detach().cpu().tolist())
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write a {type(value).__name__} to results.json: {value!r}")


def write_results(out_dir: str | Path, runs: Mapping[str, Sequence[Mapping]],
                  summary: Mapping | None = None) -> dict[str, Path]:
    """Write ``results.json`` (``{"summary": ..., "runs": ...}``, NaN as null) and
    ``results.md`` (:func:`results_markdown`) into ``out_dir``, each atomically.

    ``summary`` defaults to :func:`summarize_runs` of ``runs``. Returns
    ``{"json": path, "markdown": path}``.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {str(out)!r} exists and is not a directory")
    if summary is None:
        summary = summarize_runs(runs)
    markdown = results_markdown(summary)
    text = json.dumps({"summary": _jsonable(summary), "runs": _jsonable(runs)}, indent=2,
                      allow_nan=False)
    paths = {"json": out / "results.json", "markdown": out / "results.md"}
    with atomic_write(paths["json"], "w", encoding="utf-8") as f:
        f.write(text + "\n")
    with atomic_write(paths["markdown"], "w", encoding="utf-8") as f:
        f.write("# Results\n\n" + markdown)
    return paths
