"""Summaries over seeds, the markdown report, results files and figures."""

from __future__ import annotations

import json
import math

import pytest
import torch

from medtrim_ext.evaluation import (flatten_metrics, key_metrics, plot_probe_auc, plot_retrieval,
                                    plot_step_breakdown, plot_training_curves, results_markdown,
                                    summarize_runs, write_results)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_run(seed: int, shift: float, nan_auc: bool = False) -> dict:
    def metrics(base):
        out = {}
        for k in (1, 5, 10):
            out[f"precision@{k}"] = base + shift + 0.01 * seed - 0.01 * k
            out[f"recall@{k}"] = min(1.0, base + shift + 0.02 * k)
            out[f"pair_recall@{k}"] = 0.1 * k / 10 + shift
        out.update(mAP=base + shift, num_queries=100, gallery_size=100, queries_without_relevant=0,
                   clamped_ks=[])
        return out
    return {
        "seed": seed,
        "i2t": {"fine": metrics(0.3), "disease": metrics(0.5)},
        "t2i": {"fine": metrics(0.28), "disease": metrics(0.48)},
        "probe": {"auc": {"edema": 0.7 + shift, "pleural effusion": float("nan") if nan_auc else 0.8},
                  "macro_auc": 0.75 + shift, "skipped": [], "scored": ["edema"]},
        "train_seconds": torch.tensor(12.5 + seed),
    }


RUNS = {"medtrim": [fake_run(s, 0.05, nan_auc=(s == 2)) for s in range(3)],
        "infonce": [fake_run(s, 0.0) for s in range(3)]}


def test_flatten_metrics():
    flat = flatten_metrics({"a": {"b": 1, "c": [1, 2], "d": "x", "e": True, "f": None},
                            "g": torch.tensor(2.0)})
    assert flat["a/b"] == 1.0 and flat["g"] == 2.0 and math.isnan(flat["a/f"])
    assert set(flat) == {"a/b", "a/f", "g"}


def test_summarize_runs():
    s = summarize_runs(RUNS)
    med = s["methods"]["medtrim"]
    assert med["n_runs"] == 3 and med["seeds"] == [0, 1, 2]
    p5 = med["metrics"]["i2t/fine/precision@5"]
    vals = [0.3 + 0.05 + 0.01 * k - 0.05 for k in range(3)]
    assert p5["mean"] == pytest.approx(sum(vals) / 3) and p5["n"] == 3 and p5["n_missing"] == 0
    assert p5["std"] == pytest.approx(0.01)
    auc = med["metrics"]["probe/auc/pleural effusion"]
    assert auc["n"] == 2 and auc["n_missing"] == 1 and auc["mean"] == pytest.approx(0.8)
    assert math.isnan(auc["values"][2])
    assert "seed" not in med["metrics"] and "i2t/fine/clamped_ks" not in med["metrics"]
    assert med["metrics"]["train_seconds"]["mean"] == pytest.approx(13.5)
    single = summarize_runs({"a": [{"x": 1.0}]})["methods"]["a"]
    assert single["seeds"] is None and math.isnan(single["metrics"]["x"]["std"])
    nan_only = summarize_runs({"a": [{"x": float("nan")}]})["methods"]["a"]["metrics"]["x"]
    assert nan_only["n"] == 0 and math.isnan(nan_only["mean"])


@pytest.mark.parametrize("runs, exc", [({}, ValueError), ({"a": []}, ValueError), ({"a": {"x": 1}}, ValueError),
                                       ({"a": [1.0]}, TypeError), ({"": [{}]}, TypeError), ([], ValueError)])
def test_summarize_runs_errors(runs, exc):
    with pytest.raises(exc):
        summarize_runs(runs)


def test_markdown_table_and_comparisons():
    s = summarize_runs(RUNS)
    md = results_markdown(s)
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| metric"))
    assert header == "| metric | medtrim | infonce |"
    table = lines[:next(i for i, line in enumerate(lines) if line.startswith("Comparisons"))]
    rows = [line.split("`")[1] for line in table if line.startswith("| `")]   # the path in backticks
    assert rows == key_metrics(list(s["methods"]["medtrim"]["metrics"]))
    assert rows[0] == "i2t/fine/precision@1" and rows[-1] == "probe/macro_auc"
    assert rows.index("i2t/fine/mAP") < rows.index("i2t/disease/precision@1")
    assert "i2t/disease/pair_recall@1" not in rows and "i2t/fine/pair_recall@1" in rows
    assert "± 0.0100 (3 seeds)" in md
    p5 = [line for line in lines if line.startswith("| `i2t/fine/precision@5`")][1]
    # a 0.05 gap against seed stds of 0.01: beyond the spread, higher in every paired seed
    assert p5 == ("| `i2t/fine/precision@5` | medtrim ahead of infonce | 0.0500 | 0.0141 | "
                  "gap exceeds spread | medtrim higher in 3 of 3 |")
    assert "further metrics are in results.json" in md
    # the disease key's precision@K is the field's label-match P@K (disease set equals the
    # query's); named so in both tables, K = 1, 5 and 10, the JSON path kept beside the name
    for k in (1, 5, 10):
        for d in ("i2t", "t2i"):
            row = f"| `{d}/disease/precision@{k}` = label-match P@{k} | "
            assert sum(line.startswith(row) for line in lines) == 2    # the metric and its comparison
    assert "= label-match" not in "".join(line for line in lines if "/fine/" in line)
    assert "Label-match P@K" in md
    # a chosen metric that is not "higher is better" is reported neutrally
    md2 = results_markdown(s, metrics=["train_seconds"])
    assert "tie" in md2 or "higher than" in md2
    with pytest.raises(ValueError, match="not in the summary"):
        results_markdown(s, metrics=["nope"])
    with pytest.raises(ValueError, match="summarize_runs"):
        results_markdown({})


def _with_hub(run: dict, top: torch.Tensor) -> dict:
    """``run`` plus the hub diagnostic of the top-5 lists ``top`` in both directions."""
    from medtrim_ext.evaluation import hub_diagnostic

    hub = hub_diagnostic(top, [{}] * 100)
    return {**run, "num_samples": 100, "attributes": {"i2t": {"hub": hub}, "t2i": {"hub": hub}}}


def test_markdown_shows_and_warns_of_a_collapse():
    import warnings

    from medtrim_ext.evaluation.report import CollapseWarning

    same5 = torch.arange(5).repeat(100, 1)                            # every query: items 0-4
    spread = (torch.arange(100)[:, None] + torch.arange(5)) % 100     # every item in 5 lists
    runs = {"collapsed": [_with_hub(fake_run(s, 0.0), same5) for s in range(2)],
            "healthy": [_with_hub(fake_run(s, 0.0), spread) for s in range(2)]}
    with pytest.warns(CollapseWarning) as caught:
        md = results_markdown(summarize_runs(runs))
    assert [str(w.message).split(":")[1] for w in caught] == [" collapsed i2t, seeds 0, 1", " collapsed t2i, seeds 0, 1"]
    assert "the top 5 of all queries hold only 5 distinct items" in str(caught[0].message)
    assert "| `i2t` distinct items in any top 5 (of 100) | 5, 5 | 100, 100 |" in md
    assert "| `t2i` hub share: queries whose top 5 holds the most retrieved item | 1.000, 1.000 | 0.050, 0.050 |" in md
    assert "**Collapse warning** (collapsed i2t, seeds 0, 1)" in md and "(healthy" not in md
    # the diagnostic sits beside the metrics: before the comparisons
    assert md.index("distinct items in any top 5") < md.index("Comparisons.")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapseWarning)             # nothing fires when healthy
        md = results_markdown(summarize_runs({"healthy": runs["healthy"]}))
    assert "distinct items in any top 5" in md and "Collapse warning" not in md


def test_markdown_single_seed_and_within_spread():
    runs = {"a": [{"seed": 0, "i2t": {"fine": {"precision@1": 0.5}}}],
            "b": [{"seed": 0, "i2t": {"fine": {"precision@1": 0.4}}}]}
    md = results_markdown(summarize_runs(runs))
    assert "0.5000 (1 seed)" in md and "| a ahead of b | 0.1000 | n/a | spread unknown (single seed) | a higher in 1 of 1 |" in md
    runs = {"a": [{"x/precision@1": v} for v in (0.50, 0.60, 0.40)],
            "b": [{"x/precision@1": v} for v in (0.48, 0.62, 0.38)]}
    md = results_markdown(summarize_runs(runs))
    assert "| within spread | a higher in 2 of 3 |" in md


def test_write_results(tmp_path):
    paths = write_results(tmp_path / "out", RUNS)
    assert paths["json"].name == "results.json" and paths["markdown"].name == "results.md"
    data = json.loads(paths["json"].read_text())     # strict JSON: NaN became null
    assert data["summary"]["methods"]["medtrim"]["metrics"]["probe/auc/pleural effusion"]["values"][2] is None
    assert data["runs"]["medtrim"][0]["train_seconds"] == 12.5
    assert paths["markdown"].read_text().startswith("# Results")
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        write_results(tmp_path / "file", RUNS)
    with pytest.raises(TypeError, match="cannot write"):
        write_results(tmp_path / "bad", {"a": [{"x": 1.0, "obj": object()}]})
    assert not (tmp_path / "bad" / "results.json").exists()


def _is_png(path) -> bool:
    data = path.read_bytes()
    return len(data) > 1000 and data.startswith(PNG_MAGIC)


def test_plots_write_pngs(tmp_path):
    s = summarize_runs(RUNS)
    assert _is_png(plot_retrieval(s, tmp_path / "retrieval.png"))
    assert _is_png(plot_retrieval(s, tmp_path / "recall.png", metric="recall"))
    assert _is_png(plot_probe_auc(s, tmp_path / "probe.png"))
    single = summarize_runs({"only": [RUNS["medtrim"][0]]})
    assert _is_png(plot_retrieval(single, tmp_path / "single.png"))
    assert _is_png(plot_probe_auc(single, tmp_path / "single_probe.png"))
    assert _is_png(plot_step_breakdown({"data": 0.01, "encoders_forward": 0.05, "mining": 0.002,
                                        "loss_forward": 0.001, "loss_backward": 0.001,
                                        "encoders_backward": 0.08, "optimizer": 0.004, "total": 0.148},
                                       tmp_path / "steps.png"))
    assert _is_png(plot_step_breakdown({"medtrim": {"encoders_forward": 0.05, "mining": 0.01},
                                        "infonce": {"encoders_forward": 0.05, "loss_forward": 0.001}},
                                       tmp_path / "steps2.png"))


def test_step_breakdown_bars_every_arm_in_pipeline_order_total_not_stacked():
    from medtrim_ext.evaluation import step_breakdown_bars
    from medtrim_ext.training.timing import PHASES

    # a StepTimer.mean() per arm (its "total" is the sum of the phases), keys in arbitrary order
    timer = {"optimizer": 0.010, "loss_backward": 0.002, "data": 0.100, "encoders_backward": 0.450,
             "mining": 0.005, "encoders_forward": 0.390, "loss_forward": 0.005}
    timer["total"] = sum(timer.values())   # 0.962 s
    infonce = {**{k: v for k, v in timer.items() if k != "mining"}, "total": timer["total"] - 0.005}
    bars, parts = step_breakdown_bars({"medtrim": timer, "infonce": infonce})
    assert list(bars) == ["medtrim", "infonce"]            # before: the first arm only (demo)
    assert parts == list(PHASES)                           # before: alphabetical, "total" among them
    assert "total" not in bars["medtrim"]                  # before: drawn as a segment (1.924 s)
    assert sum(bars["medtrim"].values()) == pytest.approx(0.962)
    assert "mining" not in bars["infonce"] and sum(bars["infonce"].values()) == pytest.approx(0.957)
    # a total above the timed phases shows the gap as "other", drawn last; unknown parts keep order
    bars, parts = step_breakdown_bars({"zeta": 0.1, "data": 0.2, "alpha": 0.1, "total": 0.5})
    assert parts == ["data", "zeta", "alpha", "other"]
    assert bars["step"]["other"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="no parts besides 'total'"):
        step_breakdown_bars({"total": 1.0})
    from medtrim_ext.evaluation.plots import STEP_PARTS
    assert STEP_PARTS == PHASES


def test_plot_results_writes_the_figures_the_summary_has(tmp_path):
    from medtrim_ext.evaluation import plot_results

    written = plot_results(summarize_runs(RUNS), tmp_path / "eval")
    assert sorted(written) == ["probe_auc", "retrieval"]   # no ground-truth attributes: no figure
    assert all(_is_png(p) and p.parent == tmp_path / "eval" for p in written.values())
    with pytest.raises(ValueError, match="summarize_runs"):
        plot_results({"methods": {}}, tmp_path / "x")


def test_plot_attributes(tmp_path):
    from medtrim_ext.evaluation import plot_attributes

    def run(x):
        return {"attributes": {d: {k: {"same@5": x, "same_given_disease@5": x + 0.1, "queries": 10}
                                   for k in ("side", "size", "zone")} for d in ("i2t", "t2i")}}

    s = summarize_runs({"a": [run(0.4), run(0.5)], "b": [run(0.3), run(0.35)]})
    assert _is_png(plot_attributes(s, tmp_path / "attributes.png"))
    with pytest.raises(ValueError, match="no per-attribute metrics"):
        plot_attributes(summarize_runs(RUNS), tmp_path / "none.png")


def test_plot_training_curves(tmp_path):
    logs = {}
    for method, scale in (("medtrim", 1.0), ("infonce", 2.0)):
        for seed in (0, 1):
            p = tmp_path / f"{method}_{seed}.csv"
            rows = ["step,loss,lr,val_loss"] + [f"{s},{scale / (s + 1)},{1e-4},{'' if s % 5 else 0.5}"
                                                for s in range(50)]
            rows.append("50,nan,1e-4,")
            p.write_text("\n".join(rows) + "\n")
            logs.setdefault(method, {})[seed] = p
    assert _is_png(plot_training_curves(logs, tmp_path / "loss.png"))
    assert _is_png(plot_training_curves({m: list(v.values()) for m, v in logs.items()},
                                        tmp_path / "val.png", metric="val_loss"))
    with pytest.raises(ValueError, match="no column 'acc'"):
        plot_training_curves(logs, tmp_path / "x.png", metric="acc")
    empty = tmp_path / "empty.csv"
    empty.write_text("step,loss\n")
    with pytest.raises(ValueError, match="no finite 'loss'"):
        plot_training_curves({"m": [empty]}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="cannot read training log"):
        plot_training_curves({"m": [tmp_path / "missing.csv"]}, tmp_path / "x.png")
    bad = tmp_path / "bad.csv"
    bad.write_text("step,loss\n1,abc\n")
    with pytest.raises(ValueError, match=r"bad.csv:2"):
        plot_training_curves({"m": [bad]}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="non-empty"):
        plot_training_curves({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="lists no files"):
        plot_training_curves({"m": []}, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_plot_errors(tmp_path):
    with pytest.raises(ValueError, match="summarize_runs"):
        plot_retrieval({"methods": {}}, tmp_path / "r.png")
    no_retrieval = summarize_runs({"a": [{"probe": {"auc": {"x": float("nan")}, "macro_auc": float("nan")}}]})
    with pytest.raises(ValueError, match="no finite retrieval precision@K"):
        plot_retrieval(no_retrieval, tmp_path / "r.png")
    with pytest.raises(ValueError, match="every linear-probe AUC"):
        plot_probe_auc(no_retrieval, tmp_path / "p.png")
    with pytest.raises(ValueError, match="no linear-probe AUCs"):
        plot_probe_auc(summarize_runs({"a": [{"x": 1.0}]}), tmp_path / "p.png")
    with pytest.raises(ValueError, match="non-empty"):
        plot_step_breakdown({}, tmp_path / "s.png")
    with pytest.raises(ValueError, match=r"breakdown\['mining'\]"):
        plot_step_breakdown({"mining": float("nan")}, tmp_path / "s.png")
    with pytest.raises(ValueError, match="all parts are 0"):
        plot_step_breakdown({"mining": 0.0}, tmp_path / "s.png")
    with pytest.raises(ValueError, match="mixes"):
        plot_step_breakdown({"a": {"mining": 1.0}, "b": 1.0}, tmp_path / "s.png")
    assert not list(tmp_path.iterdir())


def _errorbars(ax) -> int:
    from matplotlib.container import ErrorbarContainer

    return sum(isinstance(c, ErrorbarContainer) for c in ax.containers)


def _na_marks(ax) -> int:
    """"n/a" labels on the axes (a missing value, told apart from a zero)."""
    return sum(t.get_text() == "n/a" for t in ax.texts)


def test_retrieval_plot_from_zero_no_error_bars_for_one_run_missing_marked():
    from medtrim_ext.evaluation.plots import retrieval_figure

    flat = fake_run(0, 0.0)
    for k in (1, 5, 10):                      # a flat curve: 0.30 at every K
        flat["i2t"]["fine"][f"precision@{k}"] = 0.30
    flat["t2i"]["fine"]["precision@5"] = float("nan")   # one missing point
    fig = retrieval_figure(summarize_runs({"one": [flat]}), "precision")
    axes = fig.axes
    assert all(ax.get_ylim()[0] == 0 for ax in axes)    # a flat 0.30 must not fill the panel
    assert all(_errorbars(ax) == 0 for ax in axes)      # n = 1: no (zero-height) error bars
    t2i_fine = next(ax for ax in axes if ax.get_title() == "text → image, fine relevance")
    assert _na_marks(t2i_fine) == 1 and sum(_na_marks(ax) for ax in axes) == 1
    fig = retrieval_figure(summarize_runs(RUNS), "precision")    # 3 seeds each: error bars
    assert all(_errorbars(ax) == 2 for ax in fig.axes) and all(_na_marks(ax) == 0 for ax in fig.axes)


def test_probe_plot_marks_missing_auc_and_drops_error_bars_for_one_run():
    from medtrim_ext.evaluation.plots import probe_auc_figure

    one = summarize_runs({"a": [fake_run(0, 0.0, nan_auc=True)], "b": [fake_run(0, 0.1)]})
    ax = probe_auc_figure(one).axes[0]
    assert ax.get_ylim()[0] == 0 and _errorbars(ax) == 0
    # a's "pleural effusion" AUC is NaN: a hatched empty bar marked n/a, not a missing or zero bar
    assert _na_marks(ax) == 1
    assert sum(1 for p in ax.patches if p.get_hatch()) == 1
    ax = probe_auc_figure(summarize_runs(RUNS)).axes[0]   # 3 seeds: error bars per method
    assert _errorbars(ax) == 2 and _na_marks(ax) == 0      # medtrim has 2 finite seeds of 3


def test_attribute_plot_marks_missing_and_drops_error_bars_for_one_run():
    from medtrim_ext.evaluation.plots import attributes_figure

    def run(x, zone=True):
        out = {d: {k: {"same@5": x, "same_given_disease@5": x + 0.1, "queries": 10}
                   for k in ("side", "size", "zone")} for d in ("i2t", "t2i")}
        if not zone:
            out["i2t"]["zone"]["same_given_disease@5"] = float("nan")
        return {"attributes": out}

    fig = attributes_figure(summarize_runs({"a": [run(0.0, zone=False)], "b": [run(0.3)]}), 5)
    assert all(ax.get_ylim()[0] == 0 and _errorbars(ax) == 0 for ax in fig.axes)
    assert sum(_na_marks(ax) for ax in fig.axes) == 1    # the NaN; a's 0.0 bars are zeros, drawn
    fig = attributes_figure(summarize_runs({"a": [run(0.4), run(0.5)], "b": [run(0.3), run(0.35)]}), 5)
    assert all(_errorbars(ax) == 2 for ax in fig.axes)
