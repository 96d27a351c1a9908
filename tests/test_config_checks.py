"""Every config value is checked by ``load_config``, before any data is read or file written;
numbers written as YAML 1.2 floats (``1e-4``) are numbers; overrides may follow the flags."""

from __future__ import annotations

import time

import pytest

from medtrim_ext.apps.cli import main
from medtrim_ext.training import load_config
from medtrim_ext.training.config import Config, parse_override
from training_helpers import tiny_config_file


def test_exponent_floats_are_numbers(tmp_path):
    # before: "optim.lr must be float, got '1e-4'" (YAML 1.1 reads 1e-4 as a string)
    cfg = load_config("demo", ["optim.lr=1e-4", "optim.betas=[9e-1, 0.999]", "train.steps=1e3",
                               "objective.kind=medtrim+soft_infonce", "objective.soft_weights=[5e-1, 3e-1, 2E-1]",
                               "objective.weights={medtrim: 2e0}", "model.image.drop_path_rate=1e-1"])
    assert cfg.optim.lr == 1e-4 and cfg.optim.betas == [0.9, 0.999] and cfg.train.steps == 1000
    assert cfg.objective.soft_weights == [0.5, 0.3, 0.2] and cfg.objective.weights == {"medtrim": 2.0}
    assert cfg.model.image["drop_path_rate"] == 0.1
    assert parse_override("data.root=1e5x") == (["data", "root"], "1e5x")
    path = tmp_path / "c.yaml"
    path.write_text("optim:\n  lr: 3e-4\n  eps: 1.0e-8\n  text_lr: .5e-5\n")
    cfg = load_config(path)
    assert (cfg.optim.lr, cfg.optim.eps, cfg.optim.text_lr) == (3e-4, 1e-8, 5e-6)
    # a dict config (e.g. from JSON) may spell floats as strings
    cfg = Config.from_dict({"optim": {"lr": "1e-4", "betas": ["0.9", "0.99"]}})
    assert cfg.optim.lr == 1e-4 and cfg.optim.betas == [0.9, 0.99]


@pytest.mark.parametrize("override, match", [
    # before: a negative learning rate (gradient ascent) from step 1 of the decay
    ("optim.min_lr_ratio=-3", r"optim.min_lr_ratio must be in \[0, 1\]"),
    ("optim.min_lr_ratio=1.5", r"optim.min_lr_ratio must be in \[0, 1\]"),
    # before: tracebacks from inside torch
    ("optim.betas=[0.9]", r"optim.betas must be two numbers in \[0, 1\)"),
    ("optim.betas=[0.9, 1.5]", r"optim.betas must be two numbers"),
    ("optim.betas=[0.9, x]", r"optim.betas\[1\] must be a number"),
    ("train.device=tpu", "train.device must be auto, cpu, mps, cuda or cuda:N, got 'tpu'"),
    # before: caught by the miner, after the data and the tokenizer were built
    ("objective.threshold=0.7", r"objective.threshold must be in \[0, objective.upper\]"),
    ("objective.semi_hard_prob=2", r"objective.semi_hard_prob must be in \[0, 1\]"),
    ("objective.w_adj=-0.1", "objective.w_adj must be >= 0"),
    ("objective.logit_temperature=0.001", "objective.logit_temperature must be >= 0.01"),
    ("optim.lr=.inf", "optim.lr must be a finite number"),
    ("objective.margin=.nan", "objective.margin must be a finite number"),
    ("optim.weight_decay=-1", "optim.weight_decay must be >= 0"),
    ("optim.text_lr=0", "optim.text_lr must be > 0"),
    ("data.kind=manifst", "data.kind must be one of"),
    ("data.num_workers=-1", "data.num_workers must be >= 0"),
    ("train.seed=-1", r"train.seed must be in \[0, 2\*\*32\)"),
    ("eval.max_samples=0", "eval.max_samples must be >= 1"),
    ("eval.batch_size=0", "eval.batch_size must be >= 1"),
    ("train.steps=1.5e3x", "train.steps must be int"),
    # sections and keys
    ("train.stepz=3", r"unknown key\(s\) \['stepz'\]"),
    ("trian.steps=3", r"unknown section\(s\) \['trian'\]"),
    ("train.steps=many", r"train.steps must be int"),
    ("train.amp=fp8", "train.amp must be one of"),
    ("objective.kind=clip", "objective.kind must be one of"),
    ("train.batch_size=1", "train.batch_size must be >= 2"),
    # the objective
    ("objective.kind=medtrim+medtrim_offline", "two mining modes"),
    ("objective.kind=medtrim+medtrim", "repeats a part"),
    ("objective.kind=medtrim+clip", "objective.kind must be one of"),
    ("objective.weights={infonce: 1.0}", "names parts not in objective.kind"),
    ("objective.weights={medtrim: -1}", "objective.weights must map parts to finite numbers"),
    ("objective.tie_break=lowest", "objective.tie_break must be one of"),
    ("objective.soft_own_weight=2", "objective.soft_own_weight must be in"),
    ("objective.target_temperature=0", "objective.target_temperature must be > 0"),
    ("objective.temperature=0.1", "objective.temperature was renamed objective.logit_temperature"),
    ("objective.min_positive_score=-1", "objective.min_positive_score must be >= 0"),
    ("objective.soft_weights=[1, 2]", "objective.soft_weights must be"),
    ("objective.soft_weights=[1, -2, 0]", "objective.soft_weights must be"),
])
def test_bad_values_name_the_key(override, match):
    with pytest.raises(ValueError, match=match):
        load_config("demo", [override])


def test_bad_config_fails_before_any_work(tmp_path, capsys):
    config = tiny_config_file(tmp_path)
    for bad in ("objective.semi_hard_prob=2", "objective.threshold=0.9", "optim.betas=[0.9]",
                "train.device=tpu"):
        t0 = time.perf_counter()
        assert main(["train", "--config", str(config), f"train.out_dir={tmp_path / 'run'}", bad]) == 2
        assert time.perf_counter() - t0 < 5   # before: ~26 s of data and tokenizer first
        assert bad.split("=")[0] in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_overrides_may_follow_the_flags(tmp_path, capsys):
    config = tiny_config_file(tmp_path)
    run = tmp_path / "run"
    # before: "unrecognized arguments: train.steps=2" (argparse exit 2)
    assert main(["train", f"train.out_dir={run}", "--no-eval", "train.steps=2", "--config", str(config),
                 "train.log_every=1"]) == 0
    assert not (run / "eval").exists()
    assert [line.split(",")[0] for line in (run / "metrics.csv").read_text().splitlines()] == ["step", "1", "2"]
    # an override after the flags reaches the config checks; unknown flags are still refused
    assert main(["train", "--config", str(config), "--no-eval", "train.stepz=3"]) == 2
    assert "unknown key(s) ['stepz']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--config", str(config), "--no-eval", "--bogus", "train.steps=2"])
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["info", "a=1"])   # a command without overrides takes none


@pytest.mark.parametrize("override, message", [
    ("eval.ks=[1.5]", r"eval.ks must be a non-empty list of whole numbers K >= 1, got \[1.5\]"),
    ("eval.ks=[a]", r"eval.ks must be a non-empty list of whole numbers K >= 1, got \['a'\]"),
    ("eval.ks=[true]", "eval.ks must be a non-empty list of whole numbers"),
    ("objective.memory_bank=1000000000000", r"objective.memory_bank must be <= 1,000,000 rows"),
])
def test_eval_ks_and_memory_bank_are_checked_up_front(override, message):
    # accepted before, then failed late (a float K in top-K, a bank of 10**12 rows) or with a
    # bare TypeError ('>=' between str and int)
    from medtrim_ext.training.config import load_config

    with pytest.raises(ValueError, match=message):
        load_config(None, [override])
