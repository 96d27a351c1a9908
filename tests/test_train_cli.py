"""`medtrim train`, `medtrim evaluate` and `medtrim demo` end to end on tiny models."""

from __future__ import annotations

import json
import math

import pytest

from medtrim_ext.apps.cli import main
from training_helpers import tiny_config_file

TINY_DEMO = ["data.image_size=32", "model.text.config.hidden_size=32",
             "model.text.config.num_attention_heads=2", "model.text.config.intermediate_size=64",
             "model.embed_dim=16", "train.batch_size=12", "train.log_every=2", "train.ckpt_every=3",
             "data.options.n_train=72", "data.options.n_validate=36", "data.options.n_test=36"]


def test_train_then_evaluate_on_other_data(tmp_path, capsys):
    config = tiny_config_file(tmp_path)
    assert main(["train", "--config", str(config), f"train.out_dir={tmp_path / 'run'}"]) == 0
    out = capsys.readouterr().out
    assert "i2t/fine/precision@5" in out and (tmp_path / "run" / "eval" / "results.json").exists()
    written = out.split("wrote:\n")[1].split()  # the paths written, checkpoint to results
    assert {str(tmp_path / "run" / n) for n in ("last.pt", "config.json", "metrics.csv")} <= set(written)
    assert str(tmp_path / "run" / "eval" / "results.md") in written

    # evaluate the run (its folder: last.pt) on phantoms written to disk, read back as a manifest
    from medtrim_ext.datasets import write_phantom_dataset

    write_phantom_dataset(tmp_path / "written", 60, seed=5, image_size=32)
    manifest = tmp_path / "written" / "manifest.csv"
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run"), "--data", str(manifest),
                 "--kind", "manifest", "--out", str(tmp_path / "ev"), "--no-progress",
                 "eval.probe_split=train"]) == 0
    result = json.loads((tmp_path / "ev" / "results.json").read_text())
    run = result["runs"]["medtrim"][0]
    assert run["split"] == "test" and run["num_samples"] > 0
    assert 0 <= run["i2t"]["fine"]["precision@1"] <= 1
    assert "macro_auc" in run["probe"]

    # an evaluation whose results would replace its own checkpoint is refused before any work
    # (issue 24 item 2: before, results.json was written over the checkpoint)
    import shutil

    (tmp_path / "ev2").mkdir()
    shutil.copy(tmp_path / "run" / "last.pt", tmp_path / "ev2" / "results.json")
    shutil.copytree(tmp_path / "run" / "tokenizer", tmp_path / "ev2" / "tokenizer")
    before = (tmp_path / "ev2" / "results.json").read_bytes()
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(tmp_path / "ev2" / "results.json"), "--out",
                 str(tmp_path / "ev2"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "results.json" in err and "is the same file as --checkpoint" in err
    assert (tmp_path / "ev2" / "results.json").read_bytes() == before


def test_train_refuses_a_run_folder_whose_outputs_replace_an_input(tmp_path, capsys):
    # before: the run wrote metrics.csv over the manifest it was reading
    from medtrim_ext.datasets import write_phantom_dataset

    write_phantom_dataset(tmp_path / "d", 24, seed=1, image_size=16)
    manifest = tmp_path / "d" / "metrics.csv"
    (tmp_path / "d" / "manifest.csv").rename(manifest)
    before = manifest.read_bytes()
    assert main(["train", "--config", "demo", "data.kind=manifest", f"data.root={manifest}",
                 "train.batch_size=8", "train.steps=1", f"train.out_dir={tmp_path / 'd'}", "--no-eval",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "train.out_dir file" in err and "is the same file as data.root" in err
    assert manifest.read_bytes() == before and not (tmp_path / "d" / "config.json").exists()
    # a model folder as the run folder: the run's files would replace the model's
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "train_summary.json").write_text("{}")
    assert main(["train", "--config", "demo", f"model.text.pretrained={tmp_path / 'm'}",
                 f"train.out_dir={tmp_path / 'm'}", "--no-eval", "--no-progress"]) == 2
    assert "would replace a file of model.text.pretrained" in capsys.readouterr().err


def test_bad_config_is_a_clean_error(tmp_path, capsys):
    assert main(["train", "--config", "demo", "train.stepz=3"]) == 2
    assert "unknown key(s) ['stepz']" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path)]) == 2  # a folder without a run
    assert "has no checkpoint 'last.pt'" in capsys.readouterr().err


def test_demo_trains_the_arms_and_compares_them_per_seed(tmp_path, capsys):
    from medtrim_ext.apps.demo import BASELINE, BEST

    assert main(["demo", "--out", str(tmp_path), "--seeds", "0", "1", "--steps", "4", "--no-progress",
                 "--device", "cpu", *TINY_DEMO]) == 0
    out = capsys.readouterr().out
    assert "fine-grained metric" in out and "mining + loss" in out and "per attribute" in out
    for name in ("results.md", "results.json", "retrieval.png", "probe_auc.png", "training_loss.png",
                 "step_breakdown.png", "phantoms.png", "verdict.json", "step_time.md", "comparison.md",
                 "attributes.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    results = json.loads((tmp_path / "results.json").read_text())
    assert {len(results["runs"][m]) for m in (BEST, BASELINE)} == {2}
    run = results["runs"][BEST][0]
    assert 0 <= run["attributes"]["i2t"]["side"]["same@5"] <= 1
    assert run["attributes"]["t2i"]["hub"]["distinct@5"] >= 1
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    cmp = verdict["comparisons"][BEST]
    assert isinstance(cmp["goal_met"], bool) and cmp["seeds"] == [0, 1]
    assert len(cmp["per_seed"]["t2i/fine/mAP"]) == 2
    assert "seed 1: " + BEST in (tmp_path / "comparison.md").read_text()
    # a second demo reuses the finished runs (they resume at their last step) and agrees
    assert main(["demo", "--out", str(tmp_path), "--seeds", "0", "1", "--steps", "4", "--no-progress",
                 "--device", "cpu", *TINY_DEMO]) == 0
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["runs"][BEST][0]["i2t"] == results["runs"][BEST][0]["i2t"]


def test_demo_rejects_unknown_arms(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--arms", "clip"])
    from medtrim_ext.apps.demo import resolve_arms

    with pytest.raises(ValueError, match="unknown demo arms"):
        resolve_arms(["clip"])
    assert resolve_arms(["all"])[0] == "infonce"


def test_paired_verdict_needs_every_seed_and_does_not_count_a_hub():
    import torch

    from medtrim_ext.apps.demo import CLAIM_METRICS, majority_precision, paired_comparison

    assert majority_precision(torch.tensor([0, 0, 0, 1])) == 0.75

    def summary(best, base, auc=(0.9, 0.9)):
        def arm(values, aucs):
            metrics = {p: {"values": list(values), "mean": sum(values) / 2} for p in CLAIM_METRICS}
            metrics["probe/macro_auc"] = {"values": list(aucs), "mean": sum(aucs) / 2}
            return {"metrics": metrics, "seeds": [0, 1], "n_runs": 2}
        return {"methods": {"a": arm(best, auc), "b": arm(base, (0.9, 0.9))}}

    cmp = paired_comparison(summary((0.5, 0.6), (0.4, 0.5)), hub_level=0.2, a="a", b="b")
    assert cmp["wins_every_seed"] and cmp["guard_ok"]
    assert not cmp["goal_met"]         # ahead in both seeds, but 2 seeds are too few to conclude
    cmp = paired_comparison(summary((0.5, 0.45), (0.4, 0.5)), hub_level=0.2, a="a", b="b")
    assert not cmp["wins_every_seed"]  # behind in seed 1
    cmp = paired_comparison(summary((0.3245, 0.3245), (0.2, 0.2)), hub_level=0.324, a="a", b="b")
    assert not cmp["wins_every_seed"]  # the hub level is not a win
    cmp = paired_comparison(summary((0.5, 0.6), (0.4, 0.5), auc=(0.85, 0.88)), hub_level=0.2, a="a", b="b")
    assert cmp["wins_every_seed"] and not cmp["guard_ok"] and not cmp["goal_met"]


def _per_seed_summary(best, base, aucs=None):
    """A summarize_runs-like summary of arms "a" and "b" with the claim metrics at the given
    per-seed values (seeds 0, 1, ...) and a probe AUC of 0.9."""
    from medtrim_ext.apps.demo import CLAIM_METRICS

    def arm(values, auc):
        metrics = {p: {"values": list(values)} for p in CLAIM_METRICS}
        metrics["probe/macro_auc"] = {"values": list(auc)}
        return {"metrics": metrics, "seeds": list(range(len(values))), "n_runs": len(values)}
    return {"methods": {"a": arm(best, aucs or [0.9] * len(best)), "b": arm(base, [0.9] * len(base))}}


def test_verdict_knows_its_limits():
    """A +0.001 lead in one seed (what `medtrim demo --steps 20 --seeds 0` called a win) is not
    enough to compare; nor are margins within the seed-to-seed spread; three seeds with margins
    beyond the spread are."""
    from medtrim_ext.apps.demo import paired_comparison

    one = paired_comparison(_per_seed_summary([0.199], [0.198]), hub_level=0.05, a="a", b="b")
    assert one["wins_every_seed"] and not one["conclusive"] and not one["goal_met"]
    assert one["limits"] == ["1 seed: not enough to compare (at least 3 needed)"]
    assert "beats" not in one["verdict"] and "NOT conclusive: 1 seed: not enough to compare" in one["verdict"]
    # three seeds, ahead in each by 0.001-0.003, but the metric moves by about 0.05 between seeds
    noisy = paired_comparison(_per_seed_summary([0.301, 0.352, 0.403], [0.300, 0.350, 0.400]),
                              hub_level=0.05, a="a", b="b")
    assert noisy["wins_every_seed"] and not noisy["conclusive"] and not noisy["goal_met"]
    assert noisy["limits"] == ["margin within the seed spread on i2t/fine/precision@5, "
                               "t2i/fine/precision@5, i2t/fine/mAP, t2i/fine/mAP"]
    m = noisy["margins"]["t2i/fine/mAP"]
    assert m["mean_difference"] == pytest.approx(0.002) and m["seed_spread"] == pytest.approx(math.hypot(0.051, 0.05))
    assert "margin within the seed spread" in noisy["verdict"]
    # three seeds, ahead by 0.05 against a spread of about 0.01: conclusive, the goal is met
    clear = paired_comparison(_per_seed_summary([0.35, 0.36, 0.35], [0.30, 0.31, 0.30]),
                              hub_level=0.05, a="a", b="b")
    assert clear["conclusive"] and clear["limits"] == [] and clear["goal_met"]
    assert clear["verdict"].startswith("a beats b on all four fine-grained metrics in every seed (3)")
    # behind in one seed: the verdict says so whatever the number of seeds
    lost = paired_comparison(_per_seed_summary([0.35, 0.29, 0.35], [0.30, 0.31, 0.30]),
                             hub_level=0.05, a="a", b="b")
    assert lost["verdict"].startswith("a does NOT beat b")


def _readme_own_data_commands() -> list[list[str]]:
    """The shell commands of the README's "Train on your own data" section, split into words."""
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Train on your own data\n", 1)[1].split("\n## ", 1)[0]
    commands, fence = [], None
    for line in section.splitlines():
        if line.startswith("```"):
            fence = line[3:].strip() if fence is None else None  # opening (its language) or closing
        elif fence == "" and line.startswith("medtrim "):      # a plain (shell) block
            commands.append(shlex.split(line))
    return commands


# the demo's encoders at test size (no data.options: the manifest takes none of the phantoms')
TINY_MANIFEST = ["data.image_size=32", "model.text.config.hidden_size=32",
                 "model.text.config.num_attention_heads=2", "model.text.config.intermediate_size=64",
                 "model.embed_dim=16", "train.batch_size=12", "train.steps=3", "train.progress=false"]


def test_readme_own_data_recipe_trains_on_a_manifest_without_split_column(tmp_path, monkeypatch, capsys):
    # before: "ManifestDataset.__init__() got an unexpected keyword argument 'n'" (the demo's
    # phantom options carried over); with data.options={}: "has no column 'split'"
    import pandas as pd

    from medtrim_ext.datasets import write_phantom_dataset
    from medtrim_ext.datasets.base import hash_split

    commands = _readme_own_data_commands()
    assert [c[:2] for c in commands] == [["medtrim", "train"], ["medtrim", "evaluate"]]
    train_cmd, eval_cmd = commands
    assert "data.kind=manifest" in train_cmd and "demo" in train_cmd
    monkeypatch.chdir(tmp_path)
    # the README writes 400 phantoms at 64 px; the same recipe at test size
    manifest = write_phantom_dataset("mydata", 60, image_size=32, fractions=None)
    assert "split" not in pd.read_csv(manifest).columns and f"data.root={manifest}" in train_cmd
    assert main([*train_cmd[1:], *TINY_MANIFEST]) == 0
    assert main([*eval_cmd[1:], "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "i2t/fine/precision@5" in out
    config = json.loads((tmp_path / "runs" / "mydata" / "config.json").read_text())
    assert config["data"]["kind"] == "manifest" and config["data"]["options"] == {}
    # the test split is the studies whose id hashes there; fine-grained keys from attributes.jsonl
    ids = pd.read_csv(manifest, dtype=str)["study_id"]
    result = json.loads((tmp_path / "runs" / "mydata" / "eval" / "results.json").read_text())
    run = result["runs"]["medtrim"][0]
    assert run["split"] == "test" and run["num_samples"] == sum(hash_split(s) == "test" for s in ids) > 0
    assert "side" in run["attributes"]["i2t"]


def test_verdict_is_not_conclusive_on_collapsed_retrieval():
    """Clear margins over 3 seeds, but the baseline's text->image top 5 is the same 5 items for
    every query in seed 1 (results.md's collapse diagnostic): no conclusion from such a run."""
    from medtrim_ext.apps.demo import paired_comparison

    summary = _per_seed_summary([0.35, 0.36, 0.35], [0.30, 0.31, 0.30])
    for arm, distinct in (("a", [400, 380, 390]), ("b", [400, 5, 390])):
        m = summary["methods"][arm]["metrics"]
        m["attributes/t2i/hub/distinct@5"] = {"values": distinct}
        m["attributes/t2i/hub/hub_share@5"] = {"values": [0.05, 1.0 if arm == "b" else 0.05, 0.05]}
        m["attributes/t2i/hub/gallery_size"] = {"values": [1000] * 3}
    cmp = paired_comparison(summary, hub_level=0.05, a="a", b="b")
    assert cmp["wins_every_seed"] and not cmp["conclusive"] and not cmp["goal_met"]
    assert cmp["limits"] == ["retrieval collapsed (results.md's collapse diagnostic): b t2i, seed 1"]
