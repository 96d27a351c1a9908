"""Hostile or careless input gets a message that says what is wrong and names the argument or the
file (issue 24, item 16): no raw traceback, no message that points at the wrong cause."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from medtrim_ext import TripletMiner
from medtrim_ext.training.checkpoint import FORMAT, load_checkpoint
from medtrim_ext.utils.checks import ArgumentTypeError, check_int, check_number


# -- misleading messages ---------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_random_bytes_checkpoint_is_not_a_torch_file_not_code(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(bytes(range(7, 256)) * 16)   # no zip, no pickle: not something torch wrote
    with pytest.raises(ValueError, match=r"'.*last.pt' is not a PyTorch checkpoint") as info:
        load_checkpoint(path)
    assert "run code" not in str(info.value)
    # a pickle opcode stream that is garbage is refused as unreadable, not as holding code
    path.write_bytes(b"\x80" + bytes(range(88, 250)))
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint") as info:
        load_checkpoint(path)
    assert "run code" not in str(info.value)


def test_an_empty_checkpoint_says_it_is_empty(tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match=r"'.*last.pt' is empty \(0 bytes\)"):
        load_checkpoint(path)
    # a truncated real checkpoint says why it cannot be read, never an empty reason
    torch.save({"format": FORMAT, "step": 1}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cannot be read: \S") as info:
        load_checkpoint(path)
    assert not str(info.value).endswith("cannot be read: ")


def test_a_checkpoint_with_code_is_still_refused_as_such(tmp_path):
    class Payload:
        def __reduce__(self):
            return os.getpid, ()

    path = tmp_path / "last.pt"
    torch.save({"format": FORMAT, "x": Payload()}, path)
    with pytest.raises(ValueError, match=r"holds objects other than tensors .*getpid"):
        load_checkpoint(path)


def test_numpy_scalars_are_numbers_and_numpy_bools_are_not():
    assert check_number("x", np.float32(0.5)) == 0.5 and type(check_number("x", np.float32(0.5))) is float
    assert check_number("x", np.int64(3)) == 3.0
    assert check_int("n", np.int64(3)) == 3 and type(check_int("n", np.int64(3))) is int
    assert check_int("n", np.uint8(0), minimum=0) == 0
    assert TripletMiner(w_dis=np.float32(0.5), threshold=np.float64(0.3)).w_dis == 0.5
    for value in (True, np.bool_(True)):
        with pytest.raises(ArgumentTypeError, match="x must be a number"):
            check_number("x", value)
        with pytest.raises(ArgumentTypeError, match="n must be a positive int"):
            check_int("n", value)
    with pytest.raises(ValueError, match="x must be finite"):
        check_number("x", np.float32("nan"))
    with pytest.raises(ValueError, match="n must be a positive int, got 0"):
        check_int("n", np.int64(0))


# -- raw tracebacks become errors naming the argument (exit 2) --------------------------------------
def _records(tmp_path):
    path = tmp_path / "records.json"
    path.write_text('[{"id": "a", "entities": {}}, {"id": "b", "entities": {}}]')
    return path


@pytest.mark.parametrize("command", ["mine", "mine-demo", "evaluate", "demo"])
def test_an_unknown_device_is_named(tmp_path, capsys, command):
    from medtrim_ext.apps.cli import main

    args = {"mine": [str(_records(tmp_path)), "-o", str(tmp_path / "out.csv")],
            "mine-demo": ["--n", "8", "--out", str(tmp_path / "md")],
            "evaluate": ["--checkpoint", str(tmp_path / "run")],
            "demo": ["--out", str(tmp_path / "demo"), "--steps", "1"]}[command]
    assert main([command, *args, "--device", "tpu"]) == 2
    err = capsys.readouterr().err
    assert "--device must be cpu, cuda, cuda:N, mps or auto, got 'tpu'" in err and "Traceback" not in err
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "md").exists()



def test_resolve_device_names_a_bad_device():
    from medtrim_ext.training.builders import resolve_device
    from medtrim_ext.training.distributed import DistContext

    with pytest.raises(ValueError, match="device must be cpu, cuda, cuda:N, mps or auto, got 'tpu'"):
        resolve_device("tpu", DistContext())
    assert resolve_device("cpu", DistContext()) == torch.device("cpu")


@pytest.mark.parametrize("key", ["n_train", "n_validate", "n_test"])
def test_a_phantom_split_size_of_0_names_its_key(tmp_path, capsys, key):
    from medtrim_ext.apps.cli import main

    from training_helpers import tiny_config_file

    run = tmp_path / "run"
    assert main(["train", "--config", str(tiny_config_file(tmp_path)), "--no-eval",
                 f"data.options.{key}=0", f"train.out_dir={run}"]) == 2
    assert f"data.options.{key} must be a positive int, got 0" in capsys.readouterr().err
    assert not run.exists(), "the refused run left a folder behind"


def _deep(levels=100_000):
    return "[" * levels + "]" * levels


@pytest.mark.parametrize("name,text,match", [
    ("deep.json", _deep(), r"deep.json: JSON nested too deeply"),
    ("deep.jsonl", '{"id": "a", "entities": ' + _deep() + "}\n", r"deep.jsonl:1: JSON nested too deeply"),
])
def test_deeply_nested_json_records_are_refused_by_name(tmp_path, capsys, name, text, match):
    from medtrim_ext.apps.cli import main
    from medtrim_ext.utils.io import load_records

    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_records(path)
    assert main(["mine", str(path), "-o", str(tmp_path / "out.csv")]) == 2
    assert "nested too deeply" in capsys.readouterr().err
    assert not (tmp_path / "out.csv").exists()


def test_deeply_nested_json_elsewhere_is_refused_by_name(tmp_path):
    from medtrim_ext.datasets.manifest import read_ground_truth
    from medtrim_ext.utils.checks import parse_json

    with pytest.raises(ValueError, match="vocabulary 'v.json' is JSON nested too deeply"):
        parse_json(_deep(), "vocabulary 'v.json'")
    attributes = tmp_path / "attributes.jsonl"
    attributes.write_text(_deep() + "\n")
    with pytest.raises(ValueError, match=r"attributes.jsonl:1: expected a JSON object"):
        read_ground_truth(attributes, tmp_path / "manifest.csv", ["a"])


def test_deeply_nested_json_in_a_parquet_records_file_is_refused_by_name(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "entities.parquet"
    pq.write_table(pa.table({"study_id": ["a"], "entities": [_deep()]}), str(path))
    from medtrim_ext.utils.io import load_records

    with pytest.raises(ValueError, match="row 0: 'entities' is JSON nested too deeply"):
        load_records(path)


def _tiny(tmp_path, *overrides):
    from medtrim_ext.training import load_config

    from training_helpers import tiny_config_file

    return load_config(tiny_config_file(tmp_path), list(overrides))


@pytest.mark.parametrize("content,match", [
    (bytes(range(128, 256)) * 8, r"config '.*bad.yaml' is not a YAML text file \(byte 0 is not UTF-8\)"),
    (b"data:\n  kind: phantoms\0\0\n", r"config '.*bad.yaml' is not a YAML text file \(it holds NUL"),
    (b"a: " + b"[" * 100_000 + b"]" * 100_000, r"config .*bad.yaml: YAML nested too deeply"),
])
def test_a_binary_or_deeply_nested_config_is_refused_by_name(tmp_path, capsys, content, match):
    from medtrim_ext.apps.cli import main
    from medtrim_ext.training import load_config

    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        load_config(path)
    assert main(["train", "--config", str(path), "--no-eval", f"train.out_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "Traceback" not in err


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_an_out_dir_that_cannot_be_created_is_named(tmp_path, capsys):
    from medtrim_ext.apps.cli import main
    from medtrim_ext.training import train

    # the trainer itself (root passes the folder check of `medtrim train`: /proc is "writable")
    with pytest.raises(ValueError, match=r"train.out_dir '/proc/medtrim-x' cannot be created"):
        train(_tiny(tmp_path, "train.out_dir=/proc/medtrim-x"))
    assert main(["train", "--config", str(tmp_path / "tiny.yaml"), "--no-eval",
                 "train.out_dir=/proc/medtrim-x/run"]) == 2
    err = capsys.readouterr().err
    assert "train.out_dir '/proc/medtrim-x/run'" in err and "Traceback" not in err


@pytest.mark.parametrize("below", ["", "sub"])
def test_a_cache_dir_that_is_a_file_is_named(tmp_path, capsys, below):
    from medtrim_ext.apps.cli import main
    from medtrim_ext.datasets.base import resolve_records
    from medtrim_ext.datasets.entity_cache import EntityCache
    from medtrim_ext.training import train

    afile = tmp_path / "afile"
    afile.write_text("x")
    cache_dir = afile / below if below else afile
    run = tmp_path / "run"
    with pytest.raises(ValueError, match=r"data.cache_dir '.*afile.*' must be a folder, but .*is a file"):
        train(_tiny(tmp_path, "data.entities=extracted", f"data.cache_dir={cache_dir}", f"train.out_dir={run}"))
    assert not run.exists()
    assert main(["train", "--config", str(tmp_path / "tiny.yaml"), "--no-eval", "data.entities=extracted",
                 f"data.cache_dir={cache_dir}", f"train.out_dir={run}"]) == 2
    assert "data.cache_dir" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"cache_dir '.*afile.*' must be a folder"):
        resolve_records("extracted", ["a"], ["No acute findings."], cache_dir=cache_dir)
    with pytest.raises(ValueError, match=r"entity cache '.*afile.*entities.parquet': a path above it is a file"):
        EntityCache(cache_dir / "entities.parquet")


# -- outputs: a full disk or a place where no file can be made --------------------------------------
class _FullDiskFile:
    """A file whose writes fail as on a full disk (ENOSPC) once half of the data got in (what
    the disk took stays in the file)."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        import errno

        self._f.write(data[: len(data) // 2])
        self._f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


@pytest.mark.parametrize("where", ["write", "fsync"])
@pytest.mark.parametrize("existing", [False, True])
def test_a_full_disk_names_the_output_and_leaves_no_partial_file(tmp_path, capsys, monkeypatch,
                                                                 where, existing):
    import errno

    from medtrim_ext.apps.cli import main
    from medtrim_ext.utils import io as mio

    records = _records(tmp_path)
    out = tmp_path / "out" / "triplets.csv"
    out.parent.mkdir()
    if existing:
        out.write_text("previous\n")
    if where == "write":
        real_fdopen = os.fdopen
        monkeypatch.setattr(mio.os, "fdopen", lambda *a, **k: _FullDiskFile(real_fdopen(*a, **k)))
    else:
        def full(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(mio.os, "fsync", full)
    assert main(["mine", str(records), "-o", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {str(out)!r}: No space left on device" in err and "Traceback" not in err
    assert ("it was left as it was" if existing else "nothing was written") in err
    assert sorted(p.name for p in out.parent.iterdir()) == (["triplets.csv"] if existing else [])
    if existing:
        assert out.read_text() == "previous\n"
    with pytest.raises(OSError) as info:   # still an OSError with its errno, for callers
        with mio.atomic_write(out) as f:
            f.write("x" * 100)
    assert info.value.errno == errno.ENOSPC and isinstance(info.value, ValueError)


def test_other_oserrors_of_the_callers_block_are_left_alone(tmp_path):
    from medtrim_ext.utils.io import atomic_write

    out = tmp_path / "out.txt"
    with pytest.raises(FileNotFoundError):
        with atomic_write(out) as f:
            f.write("x")
            open(tmp_path / "missing")   # the caller's own error, not the output's
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not os.path.isfile("/proc/version"), reason="needs Linux's /proc")
def test_mine_to_proc_version_is_refused_by_name(tmp_path, capsys):
    from medtrim_ext.apps.cli import main

    before = open("/proc/version").read()
    assert main(["mine", str(_records(tmp_path)), "-o", "/proc/version", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "'/proc/version'" in err and "Traceback" not in err
    assert open("/proc/version").read() == before
    # a command writing into a folder that cannot be made there
    assert main(["mine-demo", "--n", "16", "--out", "/proc/medtrim-x", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "cannot write '/proc/medtrim-x/" in err and "Traceback" not in err


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_mine_to_dev_full_is_refused_by_name(tmp_path, capsys):
    from medtrim_ext.apps.cli import main

    assert main(["mine", str(_records(tmp_path)), "-o", "/dev/full", "--no-progress"]) == 2
    assert "cannot write '/dev/full': No space left on device" in capsys.readouterr().err


@pytest.mark.parametrize("rows_before", [0, 1])
def test_a_full_disk_while_logging_names_metrics_csv_and_leaves_no_torn_row(tmp_path, monkeypatch,
                                                                           rows_before):
    import builtins

    from medtrim_ext.training import logger as logger_module
    from medtrim_ext.training.logger import RunLogger

    log = RunLogger(tmp_path, tensorboard=False)
    for step in range(1, rows_before + 1):
        log.log(step, {"loss": 0.5})
    before = log.path.read_bytes() if log.path.exists() else None
    real_open = builtins.open
    monkeypatch.setattr(logger_module, "open",
                        lambda *a, **k: _FullDiskFile(real_open(*a, **k)), raising=False)
    with pytest.raises(ValueError, match=r"cannot write '.*metrics.csv': No space left on device"):
        log.log(rows_before + 1, {"loss": 0.25})
    assert (log.path.read_bytes() if log.path.exists() else None) == before
    monkeypatch.undo()
    log.log(rows_before + 1, {"loss": 0.25})   # room again: the log goes on, header and all
    assert log.path.read_text().splitlines()[0] == "step,loss"
    assert len(log.path.read_text().splitlines()) == rows_before + 2


def test_a_full_disk_while_saving_the_tokenizer_is_named(tmp_path, monkeypatch):
    import errno

    from medtrim_ext.models.tokenization import save_tokenizer

    class Tokenizer:
        def save_pretrained(self, folder):
            (Path(folder) / "vocab.txt").write_text("[PAD]\n")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    out = tmp_path / "tokenizer"
    with pytest.raises(ValueError, match=r"cannot write '.*tokenizer': No space left on device"):
        save_tokenizer(Tokenizer(), out)
    assert list(tmp_path.iterdir()) == []
