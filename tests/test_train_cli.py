"""`medtrim train`, `medtrim evaluate` and `medtrim demo` end to end on tiny models."""

from __future__ import annotations

import json

import pytest

from medtrim_ext.cli import main
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

    # evaluate the checkpoint on phantoms written to disk, read back as a manifest with attributes
    from medtrim_ext.datasets import write_phantom_dataset

    write_phantom_dataset(tmp_path / "written", 60, seed=5, image_size=32)
    manifest = tmp_path / "written" / "manifest.csv"
    assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--data", str(manifest),
                 "--kind", "manifest", "--out", str(tmp_path / "ev"), "--no-progress",
                 "eval.probe_split=train"]) == 0
    result = json.loads((tmp_path / "ev" / "results.json").read_text())
    run = result["runs"]["medtrim"][0]
    assert run["split"] == "test" and run["num_samples"] > 0
    assert 0 <= run["i2t"]["fine"]["precision@1"] <= 1
    assert "macro_auc" in run["probe"]


def test_bad_config_is_a_clean_error(tmp_path, capsys):
    assert main(["train", "--config", "demo", "train.stepz=3"]) == 2
    assert "unknown key(s) ['stepz']" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_demo_trains_both_objectives_and_reports(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--seeds", "0", "1", "--steps", "4", "--no-progress",
                 "--device", "cpu", *TINY_DEMO]) == 0
    out = capsys.readouterr().out
    assert "fine-grained retrieval" in out and "mining + loss" in out
    for name in ("results.md", "results.json", "retrieval.png", "probe_auc.png", "training_loss.png",
                 "step_breakdown.png", "phantoms.png", "verdict.json", "step_time.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    results = json.loads((tmp_path / "results.json").read_text())
    assert {len(results["runs"][m]) for m in ("medtrim", "infonce")} == {2}
    verdict = json.loads((tmp_path / "verdict.json").read_text())
    assert isinstance(verdict["medtrim_wins_fine_grained"], bool)
    # a second demo reuses the finished runs (they resume at their last step) and agrees
    assert main(["demo", "--out", str(tmp_path), "--seeds", "0", "1", "--steps", "4", "--no-progress",
                 "--device", "cpu", *TINY_DEMO]) == 0
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["runs"]["medtrim"][0]["i2t"] == results["runs"]["medtrim"][0]["i2t"]


def test_verdict_does_not_count_a_hub_as_a_win():
    import torch

    from medtrim_ext.demo import _verdict, majority_precision

    assert majority_precision(torch.tensor([0, 0, 0, 1])) == 0.75

    def stats(*values):
        return {"mean": sum(values) / len(values), "values": list(values)}

    def summary(p5_a, map_a):
        metrics = {"i2t/fine/precision@5": stats(*p5_a), "i2t/fine/mAP": stats(*map_a)}
        other = {"i2t/fine/precision@5": stats(0.2, 0.2), "i2t/fine/mAP": stats(0.2, 0.2)}
        return {"methods": {"medtrim": {"metrics": metrics}, "infonce": {"metrics": other}}}

    lines, wins = _verdict(summary((0.4, 0.4), (0.3, 0.3)), hub_level=0.324)
    assert wins and "ahead in 2 of 2" in lines
    lines, wins = _verdict(summary((0.324, 0.324), (0.3, 0.3)), hub_level=0.324)
    assert not wins and "hub level" in lines
