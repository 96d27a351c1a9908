"""The training loop: config, the three objectives, logs, checkpoints, resume after a kill."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from medtrim_ext.training import load_config, train
from medtrim_ext.training.checkpoint import load_checkpoint
from medtrim_ext.training.config import apply_overrides, parse_override
from medtrim_ext.training.optim import lr_factor
from medtrim_ext.training.sampling import MinedTripletBatchSampler, StepBatchSampler
from training_helpers import dropout_model, tiny_config_file


# -- config --------------------------------------------------------------------------------------
def test_demo_preset_loads_and_overrides_apply():
    cfg = load_config("demo", ["train.steps=7", "model.image.depth=2", "objective.kind=infonce"])
    assert cfg.train.steps == 7 and cfg.model.image["depth"] == 2 and cfg.objective.kind == "infonce"
    assert cfg.data.kind == "phantoms"
    assert parse_override("optim.betas=[0.9, 0.95]") == (["optim", "betas"], [0.9, 0.95])
    assert apply_overrides({"a": {"b": 1}}, ["a.c.d=x"]) == {"a": {"b": 1, "c": {"d": "x"}}}


def test_changing_data_kind_drops_the_other_kinds_options():
    # before: the demo's phantom counts carried over (ManifestDataset got n=...)
    root = "data.root=m.csv"
    assert load_config("demo", ["data.kind=manifest", root]).data.options == {}
    # options given with the new kind are kept, before or after it
    keep = "data.options.split_fractions=[0.7, 0.2, 0.1]"
    for overrides in ([keep, "data.kind=manifest", root], ["data.kind=manifest", root, keep],
                      ["data.options={split_fractions: [0.7, 0.2, 0.1]}", "data.kind=manifest", root]):
        assert load_config("demo", overrides).data.options == {"split_fractions": [0.7, 0.2, 0.1]}
    # the same kind keeps them; a kind changed and changed back keeps them too
    demo = load_config("demo").data.options
    assert load_config("demo", ["data.kind=phantoms"]).data.options == demo
    assert load_config("demo", ["data.kind=manifest", "data.kind=phantoms"]).data.options == demo
    # evaluation overrides on a checkpoint's config dict follow the same rule
    data = load_config("demo").to_dict()
    assert "options" not in apply_overrides(data, ["data.kind=manifest"])["data"]
    assert data["data"]["options"] == demo  # the input is not modified


def test_example_configs_are_packaged_presets(tmp_path, monkeypatch):
    # before: load_config("mimic") -> "no such file, and not a preset"; configs/mimic.yaml only
    # loaded from the repository root
    from medtrim_ext.training.config import preset_names

    assert {"demo", "paper", "mimic", "iu", "manifest", "phantoms-gpu"} <= set(preset_names())
    monkeypatch.chdir(tmp_path)  # outside the repository
    for name in preset_names():
        assert load_config(name).to_dict() == load_config(f"configs/{name}.yaml").to_dict()
    assert load_config("mimic").data.kind == "mimic" and load_config("iu").data.kind == "iu"
    assert load_config("manifest").data.kind == "manifest"
    # a file of that path, when it exists, is read instead
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "mimic.yaml").write_text("train: {steps: 3}\n")
    assert load_config("configs/mimic.yaml").train.steps == 3
    with pytest.raises(ValueError, match="no such file, and not a preset"):
        load_config("configs/nothing.yaml")


def test_bad_config_files(tmp_path):
    with pytest.raises(ValueError, match="no such file, and not a preset"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ValueError, match="multiple of 3"):
        load_config("demo", ["objective.kind=medtrim_offline", "train.batch_size=64"])
    with pytest.raises(ValueError, match="must look like section.key=value"):
        load_config("demo", ["train.steps"])


def test_lr_schedule_warms_up_and_decays():
    cfg = load_config("demo", ["optim.warmup_steps=10", "optim.min_lr_ratio=0.1"]).optim
    f = [lr_factor(s, 100, cfg) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[-1] == pytest.approx(0.1, abs=1e-3)


def test_step_sampler_is_a_function_of_the_step_and_splits_the_global_batch():
    one = StepBatchSampler(50, 8, steps=20, seed=3)
    whole = list(one)
    assert all(len(b) == 8 for b in whole)
    assert sorted(sum(whole[:6], [])) == sorted(set(sum(whole[:6], [])))  # no repeat within an epoch
    resumed = list(StepBatchSampler(50, 8, steps=20, seed=3, start_step=7))
    assert resumed == whole[7:]
    ranks = [list(StepBatchSampler(50, 4, steps=20, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert [a + b for a, b in zip(*ranks)] == whole
    with pytest.raises(ValueError, match="fewer than one global batch"):
        StepBatchSampler(7, 4, steps=1, world_size=2)



def test_mined_triplets_sampler_iterates_every_triplet_each_epoch():
    triplets = torch.arange(3 * 22).reshape(22, 3)  # 22 triplets, 4 a step: 5 steps an epoch
    sampler = MinedTripletBatchSampler(triplets, 4, steps=12, seed=1)
    batches = list(sampler)
    assert sampler.steps_per_epoch == 5 and len(batches) == 12
    assert all(len(b) == 12 for b in batches)
    rows = [torch.tensor([i for i, _ in b]).reshape(3, 4).T for b in batches]  # anchors, positives, negatives
    assert all(torch.equal(r[:, 1], r[:, 0] + 1) and torch.equal(r[:, 2], r[:, 0] + 2) for r in rows)
    epoch0, epoch1 = torch.cat(rows[:5]), torch.cat(rows[5:10])
    assert len(set(epoch0[:, 0].tolist())) == 20 and len(set(epoch1[:, 0].tolist())) == 20  # 2 dropped
    assert not torch.equal(epoch0, epoch1)  # a new order every epoch
    assert [e for b in batches for _, e in b] == [s // 5 for s in range(12) for _ in range(12)]
    assert list(MinedTripletBatchSampler(triplets, 4, steps=12, seed=1, start_step=7)) == batches[7:]
    # 2 processes of 2 triplets: each takes its half of every global batch of 4
    ranks = [list(MinedTripletBatchSampler(triplets, 2, steps=12, seed=1, rank=r, world_size=2))
             for r in range(2)]
    for b, b0, b1 in zip(batches, *ranks):
        halves = [torch.tensor([i for i, _ in x]).reshape(3, 2) for x in (b0, b1)]
        assert torch.equal(torch.cat(halves, 1).reshape(-1), torch.tensor([i for i, _ in b]))
    with pytest.raises(ValueError, match="fewer than one global batch"):
        MinedTripletBatchSampler(triplets, 12, steps=1, world_size=2)
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        MinedTripletBatchSampler(torch.zeros(5, 2), 1, steps=1)

# -- training ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, extra", [("medtrim", {}), ("infonce", {}),
                                         ("medtrim_offline", {}), ("medtrim", {"memory_bank": 24}),
                                         ("medtrim+infonce", {"weights": {"infonce": 0.5}}),
                                         ("soft_infonce", {})])
def test_training_runs_logs_and_checkpoints(tmp_path, kind, extra):
    cfg = load_config(tiny_config_file(tmp_path, objective={"kind": kind, **extra}),
                      [f"train.out_dir={tmp_path / 'run'}"])
    result = train(cfg)
    run = tmp_path / "run"
    assert result["steps"] == 6 and result["world_size"] == 1
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    assert all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in rows)
    state = load_checkpoint(run / "last.pt")
    assert state["step"] == 6 and state["config"]["objective"]["kind"] == kind
    if kind.startswith("medtrim+"):
        assert 0 < float(rows[-1]["medtrim/valid_fraction"]) <= 1
    elif "medtrim" in kind:
        assert 0 < float(rows[-1]["valid_fraction"]) <= 1
    times = result["step_time"]
    for phase in ("data", "encoders_forward", "mining", "loss_forward", "loss_backward",
                  "encoders_backward", "optimizer"):
        assert times[phase] >= 0
    assert json.loads((run / "train_summary.json").read_text())["steps"] == 6
    assert (run / "tokenizer").is_dir()


def test_training_changes_the_weights_and_lowers_the_loss(tmp_path):
    cfg = load_config(tiny_config_file(tmp_path), [f"train.out_dir={tmp_path / 'run'}", "train.steps=30",
                                                    "train.log_every=1", "optim.lr=0.003"])
    train(cfg)
    losses = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "run" / "metrics.csv"))]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first, losses


def test_bf16_autocast_training_runs(tmp_path):
    cfg = load_config(tiny_config_file(tmp_path), [f"train.out_dir={tmp_path / 'run'}", "train.amp=bf16"])
    assert torch.isfinite(torch.tensor(train(cfg)["final"]["loss"]))


def test_frozen_layers_stay_fixed(tmp_path):
    cfg = load_config(tiny_config_file(tmp_path), [f"train.out_dir={tmp_path / 'run'}",
                                                    "model.image.freeze_layers=1",
                                                    "model.text.freeze_layers=1"])
    train(cfg)
    from medtrim_ext.training.builders import build_model

    state = load_checkpoint(tmp_path / "run" / "last.pt")
    torch.manual_seed(cfg.train.seed)
    fresh = build_model(cfg, state["model_config"]["text"]["config"]["vocab_size"]).state_dict()
    trained = state["model"]
    frozen = [k for k in fresh if k.startswith("image.") and "blocks.0." in k]
    assert frozen and all(torch.equal(fresh[k], trained[k]) for k in frozen)
    assert not torch.equal(fresh["image_proj.weight"] if "image_proj.weight" in fresh else
                           next(v for k, v in fresh.items() if "proj" in k),
                           trained["image_proj.weight"] if "image_proj.weight" in trained else
                           next(v for k, v in trained.items() if "proj" in k))


def _model_state(path):
    return load_checkpoint(path)["model"]


def test_resume_after_kill_gives_the_uninterrupted_weights(tmp_path):
    """Kill a run (SIGKILL) after its first checkpoint, restart it: the final weights equal
    those of a run that never stopped, with dropout on and two data-loader workers."""
    config = tiny_config_file(tmp_path, model=dropout_model(), data={"num_workers": 2},
                              train={**{"steps": 60, "batch_size": 12, "log_every": 5,
                                        "ckpt_every": 5, "progress": False,
                                        "tensorboard": True, "device": "cpu"}})
    cmd = [sys.executable, "-m", "medtrim_ext.train", "--config", str(config), "--no-eval"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd + [f"train.out_dir={killed}"], env=env, cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (killed / "last.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    step_at_kill = load_checkpoint(killed / "last.pt")["step"]
    assert step_at_kill < 60
    assert not list(killed.glob(".last.pt.*.tmp")) or True  # a torn temp file may remain; last.pt is whole
    subprocess.run(cmd + [f"train.out_dir={killed}"], env=env, cwd=tmp_path, check=True,
                   stdout=subprocess.DEVNULL)
    straight = tmp_path / "straight"
    subprocess.run(cmd + [f"train.out_dir={straight}"], env=env, cwd=tmp_path, check=True,
                   stdout=subprocess.DEVNULL)
    a, b = _model_state(killed / "last.pt"), _model_state(straight / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    steps = [int(r["step"]) for r in csv.DictReader(open(killed / "metrics.csv"))]
    assert steps == list(range(5, 61, 5)), "the log holds every step once after the resume"


def test_package_imports_stay_light_and_lazy_names_resolve():
    code = ("import sys, medtrim_ext; assert not {'timm', 'transformers', 'spacy'} & set(sys.modules); "
            "from medtrim_ext import DualEncoder, InfoNCELoss, MemoryBank, load_dataset, train; "
            "print(DualEncoder.__name__, InfoNCELoss.__name__, MemoryBank.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["DualEncoder", "InfoNCELoss", "MemoryBank"]


def test_run_logger_widens_its_header_and_drops_rows_after_a_resume(tmp_path):
    from medtrim_ext.training.logger import RunLogger

    log = RunLogger(tmp_path, tensorboard=False)
    log.log(1, {"loss": 1.0})
    log.log(2, {"loss": 0.5, "pos_score": 0.9})  # a column that appears later
    log.log(3, {"loss": 0.4, "pos_score": 0.8})
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [r["step"] for r in rows] == ["1", "2", "3"] and rows[0]["pos_score"] == ""
    RunLogger(tmp_path, tensorboard=False, resume_step=2).log(3, {"loss": 0.3, "pos_score": 0.7})
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [(r["step"], r["loss"]) for r in rows] == [("1", "1.0"), ("2", "0.5"), ("3", "0.3")]


def test_the_built_in_defaults_give_a_text_model_that_builds():
    """`medtrim train` with no --config: model.text is {} and the tokenizer's size used to become
    the whole text config ({vocab_size} without a model_type), which failed after the run folder
    was written. Now the encoder's default config gets the tokenizer's size."""
    from medtrim_ext.models.text import DEFAULT_TEXT_CONFIG, _build_config
    from medtrim_ext.training.builders import model_config
    from medtrim_ext.training.config import Config

    text = model_config(Config(), vocab_size=123)["text"]
    assert text["config"] == {**DEFAULT_TEXT_CONFIG, "vocab_size": 123}
    built = _build_config(text["config"], None)
    assert built.model_type == "bert" and built.vocab_size == 123


@pytest.mark.parametrize("override, message", [
    ("model.image={name: no_such_model}", "model.image.name: unknown timm model 'no_such_model'"),
    ("model.text={config: {model_type: bert, hidden_size: 30, num_attention_heads: 4, "
     "num_hidden_layers: 1, intermediate_size: 8}}", "hidden_size 30 is not a multiple of num_attention_heads 4"),
    ("data.max_length=600", r"data.max_length=600 is more than the text model's \d+ positions"),
    ("train.batch_size=100", r"train.batch_size=100 is more than the \d+ samples"),
])
def test_settings_that_cannot_train_fail_before_the_run_folder_is_written(tmp_path, override, message):
    """These passed the config checks and failed only after config.json and tokenizer/ were
    written, which then made a corrected re-run in the same folder a different run."""
    from medtrim_ext.training import load_config, train
    from training_helpers import tiny_config_file

    out = tmp_path / "run"
    cfg = load_config(str(tiny_config_file(tmp_path)), [f"train.out_dir={out}", "train.progress=false",
                                                        override])
    with pytest.raises(ValueError, match=message):
        train(cfg)
    assert not (out / "config.json").exists() and not (out / "tokenizer").exists()
