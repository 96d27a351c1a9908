"""What `medtrim train` and `medtrim evaluate` leave for a person to read: figures next to the
results, errors that name the file or path at fault, and output paths checked before any work."""

from __future__ import annotations

import json

import pytest

from medtrim_ext.apps.cli import main
from training_helpers import tiny_config_file

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png(path) -> bool:
    return path.is_file() and path.read_bytes().startswith(PNG_MAGIC) and path.stat().st_size > 1000


def test_train_and_evaluate_write_their_figures(tmp_path, capsys):
    config = tiny_config_file(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), f"train.out_dir={run}"]) == 0
    # before: no PNG at all (the README said there were)
    assert _png(run / "training_loss.png")
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["plots"] == {"training_loss": str(run / "training_loss.png")}
    for name in ("retrieval.png", "probe_auc.png", "attributes.png"):
        assert _png(run / "eval" / name), name
    capsys.readouterr()

    assert main(["evaluate", "--checkpoint", str(run / "last.pt"), "--out", str(tmp_path / "ev"),
                 "--no-progress", "eval.probe=false"]) == 0
    out = capsys.readouterr().out
    assert _png(tmp_path / "ev" / "retrieval.png") and _png(tmp_path / "ev" / "attributes.png")
    assert not (tmp_path / "ev" / "probe_auc.png").exists()   # no probe, no probe figure
    assert str(tmp_path / "ev" / "retrieval.png") in out and str(tmp_path / "ev" / "results.md") in out


def test_unwritable_outputs_fail_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    missing = tmp_path / "missing-input"
    # before: extract read and analysed every report, then died with a traceback
    assert main(["extract", str(missing), "-o", str(blocker / "x.parquet"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "cannot write output" in err and "x.parquet" in err   # not the missing reports
    assert main(["mine", str(missing), "-o", str(blocker / "t.csv"), "--device", "cpu"]) == 2
    assert "cannot write output" in capsys.readouterr().err
    assert main(["train", "--config", str(tiny_config_file(tmp_path)), f"train.out_dir={blocker / 'run'}"]) == 2
    assert "cannot write train.out_dir" in capsys.readouterr().err
    fake_ckpt = tmp_path / "last.pt"   # never loaded: the output folder is checked first
    fake_ckpt.write_bytes(b"not a checkpoint")
    assert main(["evaluate", "--checkpoint", str(fake_ckpt), "--out", str(blocker / "ev")]) == 2
    assert "cannot write evaluation output folder" in capsys.readouterr().err
    assert main(["demo", "--out", str(blocker), "--steps", "1", "--seeds", "0"]) == 2
    assert "cannot write demo output folder" in capsys.readouterr().err


def _log(path, text):
    path.write_text(text) if isinstance(text, str) else path.write_bytes(text)


@pytest.mark.parametrize("content, match", [
    ("step,loss\n1,0.5\nabc,0.4\n3,0.3\n", "line 3: step 'abc' is not a whole number"),
    ("step,loss\n1,0.5\n2.5,0.4\n3,0.3\n", "line 3: step '2.5' is not a whole number"),
    ("stp,loss\n1,0.5\n", "no 'step' column"),
    ("step,loss\n1,0.5,9\n2,0.4\n", "line 2 has more values than the header's 2"),
    ("step,loss\n1\n2,0.4\n", "line 2 has fewer values"),
    (b"\xff\xfe\x00garbage\x00\n", "not a CSV text file"),
])
def test_a_damaged_metrics_csv_is_named(tmp_path, content, match):
    from medtrim_ext.training.logger import RunLogger

    _log(tmp_path / "metrics.csv", content)
    # before: "could not convert string to float: 'abc'", KeyError 'step', ... naming no file
    with pytest.raises(ValueError, match=f"training log '.*metrics.csv' is damaged: {match}"):
        RunLogger(tmp_path, tensorboard=False, resume_step=3)


def test_a_torn_last_row_is_dropped_and_a_new_run_discards_the_old_log(tmp_path):
    from medtrim_ext.training.logger import RunLogger

    _log(tmp_path / "metrics.csv", "step,loss,lr\n1,0.5,0.1\n2,0.4,0.1\n3,0.3")   # killed mid-append
    RunLogger(tmp_path, tensorboard=False, resume_step=3).log(3, {"loss": 0.25, "lr": 0.1})
    assert (tmp_path / "metrics.csv").read_text().splitlines() == [
        "step,loss,lr", "1,0.5,0.1", "2,0.4,0.1", "3,0.25,0.1"]
    _log(tmp_path / "metrics.csv", b"\xff\xfe damaged")
    RunLogger(tmp_path, tensorboard=False, resume_step=0).log(1, {"loss": 1.0})
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["step,loss", "1,1.0"]
