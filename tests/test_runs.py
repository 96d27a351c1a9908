"""Run folders and checkpoints: a run never silently becomes another run, resume is exact with
dropout and workers, and loading a checkpoint never runs code."""

from __future__ import annotations

import json
import os
import re
import warnings

import numpy as np
import pytest
import torch

from medtrim_ext.apps.cli import main
from medtrim_ext.training import load_config, train
from medtrim_ext.training import loop
from medtrim_ext.training.checkpoint import FORMAT, load_checkpoint, rng_state, set_rng_state
from training_helpers import dropout_model, tiny_config_file

STAMP = r"\d{8}-\d{6}"


def _cfg(tmp_path, *overrides, **sections):
    return load_config(tiny_config_file(tmp_path, **sections), list(overrides))


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- 1. a unique folder per run; a changed config never continues silently -------------------------
def test_runs_without_out_dir_get_their_own_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = train(_cfg(tmp_path, "train.steps=3"))
    b = train(_cfg(tmp_path, "train.steps=3", "objective.kind=infonce"))
    c = train(_cfg(tmp_path, "train.steps=3"))
    names = [os.path.relpath(r["out_dir"], tmp_path) for r in (a, b, c)]
    assert re.fullmatch(rf"runs/medtrim-{STAMP}", names[0]), names
    assert re.fullmatch(rf"runs/infonce-{STAMP}", names[1]), names
    assert re.fullmatch(rf"runs/medtrim-{STAMP}(-2)?", names[2]) and names[2] != names[0], names
    for r, kind in zip((a, b, c), ("medtrim", "infonce", "medtrim")):
        assert r["resumed_from"] == 0 and r["steps"] == 3
        assert load_checkpoint(os.path.join(r["out_dir"], "last.pt"))["config"]["objective"]["kind"] == kind
        saved = json.loads((tmp_path / r["out_dir"] / "config.json").read_text())
        assert saved["train"]["out_dir"] == r["out_dir"] and saved["objective"]["kind"] == kind
    # runs in default folders share one entity cache instead of extracting again per run
    from medtrim_ext.training.rundir import with_default_out_dir

    cfg = with_default_out_dir(load_config("demo"))
    assert cfg.data.cache_dir == os.path.join("runs", "entity-cache")
    assert re.fullmatch(rf"runs/medtrim-{STAMP}(-\d+)?", cfg.train.out_dir)


def test_a_changed_config_refuses_to_resume_and_writes_nothing(tmp_path):
    run = tmp_path / "run"
    train(_cfg(tmp_path, f"train.out_dir={run}"))
    before = _snapshot(run)
    for override, listed in [("objective.kind=infonce", "objective.kind: 'medtrim' -> 'infonce'"),
                             ("objective.margin=0.2", "objective.margin: 0.3 -> 0.2"),
                             ("model.image.depth=2", "model.image.depth: 1 -> 2")]:
        with pytest.raises(ValueError) as err:
            train(_cfg(tmp_path, f"train.out_dir={run}", override))
        msg = str(err.value)
        assert listed in msg and "train.resume=force" in msg and "train.out_dir" in msg, msg
        assert _snapshot(run) == before, override  # config.json and last.pt untouched
    # an invalid config is refused by its own check, and the run is still untouched
    with pytest.raises(ValueError, match="data.kind must be one of"):
        train(_cfg(tmp_path, f"train.out_dir={run}", "data.kind=manifst"))
    assert _snapshot(run) == before
    # keys that may change: more steps (the run continues), logging, evaluation, workers
    more = train(_cfg(tmp_path, f"train.out_dir={run}", "train.steps=8", "train.log_every=1",
                      "eval.ks=[1]", "data.num_workers=0"))
    assert (more["resumed_from"], more["steps"]) == (6, 8)


def test_resume_force_continues_on_purpose_and_never_refuses_an_existing_run(tmp_path):
    run = tmp_path / "run"
    train(_cfg(tmp_path, f"train.out_dir={run}"))
    with pytest.warns(UserWarning, match=r"changed config: objective.margin: 0.3 -> 0.2"):
        forced = train(_cfg(tmp_path, f"train.out_dir={run}", "objective.margin=0.2",
                            "train.steps=8", "train.resume=force"))
    assert forced["resumed_from"] == 6
    assert json.loads((run / "config.json").read_text())["objective"]["margin"] == 0.2
    # a checkpoint that cannot fit the new objective: a clear error, not one from deep inside
    # torch, and the run's files stay as they were
    before = _snapshot(run)
    with pytest.raises(ValueError, match="does not fit this run's model, objective or optimizer"):
        with pytest.warns(UserWarning):
            train(_cfg(tmp_path, f"train.out_dir={run}", "objective.kind=infonce", "train.resume=force"))
    assert _snapshot(run) == before
    with pytest.raises(ValueError, match="train.resume=never but train.out_dir=.* already holds a run"):
        train(_cfg(tmp_path, f"train.out_dir={run}", "train.resume=never"))
    with pytest.raises(ValueError, match="no checkpoint .* to continue"):
        train(_cfg(tmp_path, f"train.out_dir={tmp_path / 'empty'}", "train.resume=force"))
    assert not (tmp_path / "empty").exists()
    assert train(_cfg(tmp_path, f"train.out_dir={tmp_path / 'new'}", "train.resume=never",
                      "train.steps=3"))["resumed_from"] == 0


def test_resume_from_a_checkpoint_path_into_another_folder(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train(_cfg(tmp_path, f"train.out_dir={a}"))
    with pytest.warns(UserWarning, match="optim.lr: 0.001 -> 0.0005"):
        out = train(_cfg(tmp_path, f"train.out_dir={b}", f"train.resume={a / 'last.pt'}",
                         "train.steps=8", "optim.lr=0.0005"))
    assert out["resumed_from"] == 6 and load_checkpoint(b / "last.pt")["step"] == 8
    with pytest.raises(ValueError, match="already holds another run"):
        train(_cfg(tmp_path, f"train.out_dir={b}", f"train.resume={a / 'last.pt'}"))
    with pytest.raises(ValueError, match="is not one of .* and no such checkpoint"):
        train(_cfg(tmp_path, f"train.out_dir={b}", "train.resume=forse"))


def test_a_folder_without_checkpoint_is_restarted_only_with_its_config(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    cfg = _cfg(tmp_path, f"train.out_dir={run}", "train.steps=3")
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))  # killed before its first checkpoint
    with pytest.raises(ValueError, match="(?s)no checkpoint yet with another config.*objective.kind"):
        train(_cfg(tmp_path, f"train.out_dir={run}", "train.steps=3", "objective.kind=infonce"))
    assert train(cfg)["resumed_from"] == 0


def test_an_invalid_config_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = tiny_config_file(tmp_path)
    with pytest.raises(ValueError, match="manifst"):
        train(_cfg(tmp_path, f"train.out_dir={tmp_path / 'run'}", "data.kind=manifst"))
    with pytest.raises(ValueError, match="manifst"):
        train(_cfg(tmp_path, "data.kind=manifst"))  # a default folder
    assert main(["train", "--config", str(config), "--no-eval", "data.kind=manifst",
                 f"train.out_dir={tmp_path / 'cli'}"]) == 2
    assert "manifst" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]


def test_train_prints_the_paths_it_wrote_and_warns_when_all_is_warm_up(tmp_path, capsys):
    run = tmp_path / "run"
    config = tiny_config_file(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 6 steps after 2 warm-up steps: no warning
        assert main(["train", "--config", str(config), "--no-eval", f"train.out_dir={run}"]) == 0
    out = capsys.readouterr().out
    for name in ("last.pt", "config.json", "metrics.csv", "train_summary.json", "tokenizer"):
        assert f"  {run / name}\n" in out, (name, out)
    with pytest.warns(UserWarning, match=r"train.steps=3 <= optim.warmup_steps=5: the whole run is warm-up"):
        train(_cfg(tmp_path, f"train.out_dir={tmp_path / 'warm'}", "train.steps=3", "optim.warmup_steps=5"))


# -- 2. resume is exact with dropout on, with and without data-loader workers ----------------------
@pytest.mark.parametrize("workers", [0, 2])
def test_stopped_run_with_dropout_resumes_to_the_same_weights(tmp_path, monkeypatch, workers):
    overrides = [f"data.num_workers={workers}", "train.steps=6", "train.ckpt_every=3"]
    sections = {"model": dropout_model()}
    train(_cfg(tmp_path, *overrides, f"train.out_dir={tmp_path / 'straight'}", **sections))

    step = loop.Trainer._step

    def stop_at_4(self, batch, i):  # stop after the checkpoint of step 3, as a crash would
        if i == 4:
            raise KeyboardInterrupt
        return step(self, batch, i)

    monkeypatch.setattr(loop.Trainer, "_step", stop_at_4)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(tmp_path, *overrides, f"train.out_dir={tmp_path / 'stopped'}", **sections))
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "stopped" / "last.pt")["step"] == 3
    assert train(_cfg(tmp_path, *overrides, f"train.out_dir={tmp_path / 'stopped'}",
                      **sections))["resumed_from"] == 3
    a = load_checkpoint(tmp_path / "straight" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "stopped" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed weights differ (dropout masks shifted)"


# -- 3. loading a checkpoint never runs code --------------------------------------------------------
class _Payload:
    """Unpickling this calls os.system, which would create ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_malicious_checkpoint_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil" / "last.pt"
    evil.parent.mkdir()
    torch.save({"format": FORMAT, "step": 1, "config": {}, "x": _Payload(marker)}, evil)
    with pytest.raises(ValueError, match=r"holds objects other than tensors and plain values \(.*system"):
        load_checkpoint(evil)
    assert main(["evaluate", "--checkpoint", str(evil), "--no-progress"]) == 2
    assert "holds objects other than tensors" in capsys.readouterr().err
    with pytest.raises(ValueError, match="holds objects other than tensors"):
        train(_cfg(tmp_path, f"train.out_dir={tmp_path / 'run'}", f"train.resume={evil}"))
    assert not marker.exists(), "loading the checkpoint ran its code"
    torch.load(evil, weights_only=False)  # the payload is real: a plain unpickle runs it
    assert marker.exists()


def test_checkpoints_hold_only_tensors_and_plain_values(tmp_path):
    run = tmp_path / "run"
    train(_cfg(tmp_path, f"train.out_dir={run}", "train.steps=3", "objective.memory_bank=24"))
    state = torch.load(run / "last.pt", weights_only=True)  # torch's own allow-list, nothing added
    assert state["format"] == FORMAT and state["objective"]["bank._extra_state"]["count"] > 0
    # the RNG state round-trips, and older checkpoints (NumPy's state as an array) still load
    np.random.seed(3)
    saved = rng_state()
    expected = np.random.rand(3)
    set_rng_state(saved)
    assert np.array_equal(np.random.rand(3), expected)
    np.random.seed(5)
    legacy = np.random.get_state()  # a tuple holding a NumPy array
    follow = np.random.rand(3)
    torch.save({**state, "rng": {**state["rng"], "numpy": legacy}}, run / "old.pt")
    np.random.seed(0)
    set_rng_state(load_checkpoint(run / "old.pt")["rng"])
    assert np.array_equal(np.random.rand(3), follow)
    with pytest.raises(ValueError, match="has no checkpoint 'last.pt'"):
        load_checkpoint(tmp_path)


def test_an_image_weights_file_is_read_without_running_code(tmp_path):
    from medtrim_ext.models import ImageEncoder

    marker = tmp_path / "pwned"
    evil = tmp_path / "weights.pth"
    torch.save({"state_dict": {"x": _Payload(marker)}}, evil)
    with pytest.raises(ValueError, match="cannot read checkpoint file"):
        ImageEncoder("test_resnet", in_chans=1, checkpoint=str(evil))
    assert not marker.exists()


# -- issue 24 item 3: one run per folder ---------------------------------------------------------
def test_a_second_run_in_a_busy_folder_refuses_naming_the_holder(tmp_path):
    import subprocess
    import sys

    from medtrim_ext.training.loop import Trainer

    run = tmp_path / "run"
    first = Trainer(_cfg(tmp_path, f"train.out_dir={run}", "train.steps=2"))   # holds the folder
    # before: the second run trained too, and the two mixed metrics.csv, config.json and last.pt
    with pytest.raises(ValueError, match=rf"train.out_dir '{re.escape(str(run))}' is in use by "
                                         rf"another run \(process {os.getpid()}\b"):
        train(_cfg(tmp_path, f"train.out_dir={run}", "train.steps=2"))
    # another process sees the lock as well (flock), with the holder's process id
    code = ("import sys\nfrom medtrim_ext.training.rundir import lock_run_dir\n"
            "try:\n    lock_run_dir(sys.argv[1])\nexcept ValueError as e:\n    print(e)\n")
    # cwd: not the repository root, whose source folder (no compiled _C) would shadow the install
    out = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True,
                         check=True, cwd=tmp_path).stdout
    assert f"in use by another run (process {os.getpid()}" in out, out
    result = first.fit()   # a finished run lets the folder go: continuing it works
    assert result["steps"] == 2
    more = train(_cfg(tmp_path, f"train.out_dir={run}", "train.steps=3"))
    assert (more["resumed_from"], more["steps"]) == (2, 3)
    # a run that fails to start lets the folder go too
    with pytest.raises(ValueError, match="data.kind must be one of"):
        train(_cfg(tmp_path, f"train.out_dir={run}", "data.kind=manifst"))
    assert train(_cfg(tmp_path, f"train.out_dir={run}", "train.steps=4"))["resumed_from"] == 3


def test_a_killed_runs_forked_children_do_not_keep_its_folder_locked(tmp_path):
    """DataLoader workers are forked children; they shared the run's flock and kept a SIGKILLed
    run's folder locked until they noticed and exited, so a resume right away was refused."""
    import subprocess
    import sys

    from medtrim_ext.training.rundir import lock_run_dir

    code = ("import os, sys, time\nfrom medtrim_ext.training.rundir import lock_run_dir\n"
            "lock = lock_run_dir(sys.argv[1])\n"
            "child = os.fork()\n"
            "if child == 0:   # lets go of the captured output, or run() would wait for it\n"
            "    null = os.open(os.devnull, os.O_WRONLY)\n    os.dup2(null, 1)\n    os.dup2(null, 2)\n"
            "    time.sleep(30)\n    os._exit(0)\n"
            "print(child, flush=True)\nos._exit(0)   # the run dies; its child lives on\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                         check=True, cwd=tmp_path).stdout
    child = int(out.split()[0])
    try:
        os.kill(child, 0)   # still alive
        lock_run_dir(tmp_path).release()   # before: "is in use by another run"
    finally:
        os.kill(child, 9)
