"""Atomic writes: permissions as a plain open gives, leftovers of killed writers cleaned up, and
output paths checked before any work."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import medtrim_ext.utils.io as mio
from medtrim_ext.utils.io import atomic_write, check_writable, make_temp_dir, remove_stale_temps


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    old = os.umask(0o022)
    os.umask(old)
    yield lambda m: os.umask(m)
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_write_honours_the_umask(tmp_path, umask, mask):
    umask(mask)
    assert mio.current_umask() == mask
    with atomic_write(tmp_path / "out.txt") as f:
        f.write("x")
    assert _mode(tmp_path / "out.txt") == 0o666 & ~mask   # before: 0600 whatever the umask
    folder = make_temp_dir(tmp_path / "tok")
    assert _mode(folder) == 0o777 & ~mask                 # before: 0700 (mkdtemp)


def test_saved_tokenizer_folder_honours_the_umask(tmp_path, umask):
    from medtrim_ext.models.tokenization import save_tokenizer, train_wordpiece_tokenizer

    umask(0o022)
    out = save_tokenizer(train_wordpiece_tokenizer(["a few words here"], vocab_size=100), tmp_path / "tok")
    assert _mode(out) == 0o755
    assert all(_mode(p) == 0o644 for p in out.iterdir())
    assert [p.name for p in tmp_path.iterdir()] == ["tok"]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temps_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    target = tmp_path / "out.txt"
    host = mio._host_tag()
    dead = tmp_path / f".out.txt.{_dead_pid()}-{host}.abcdefgh.tmp"
    dead_dir = tmp_path / f".out.txt.{_dead_pid()}-{host}.abcdefgh.old"
    live = tmp_path / f".out.txt.{os.getppid()}-{host}.abcdefgh.tmp"        # a live process
    mine = tmp_path / f".out.txt.{os.getpid()}-{host}.abcdefgh.tmp"         # another thread of ours
    elsewhere = tmp_path / f".out.txt.{_dead_pid()}-zzzzzz.abcdefgh.tmp"    # another machine
    other_target = tmp_path / f".out.txt.bak.{_dead_pid()}-{host}.abcdefgh.tmp"
    legacy_old = tmp_path / ".out.txt.abcdefgh.tmp"                         # older versions' names
    legacy_new = tmp_path / ".out.txt.ijklmnop.tmp"
    for p in (dead, live, mine, elsewhere, other_target, legacy_old, legacy_new):
        p.write_text("partial")
    dead_dir.mkdir()
    (dead_dir / "vocab.txt").write_text("x")
    os.utime(legacy_old, (1, 1))   # written long before this process started
    with atomic_write(target) as f:
        f.write("whole")
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"out.txt", live.name, mine.name, elsewhere.name, other_target.name, legacy_new.name}
    assert remove_stale_temps(target) == []


def test_a_killed_writer_leaves_a_temp_the_next_write_removes(tmp_path):
    io_path = Path(mio.__file__)
    script = textwrap.dedent(f"""
        import importlib.util, sys, time
        spec = importlib.util.spec_from_file_location("mio", {str(io_path)!r})
        mio = importlib.util.module_from_spec(spec); spec.loader.exec_module(mio)
        with mio.atomic_write({str(tmp_path / 'last.pt')!r}, "wb") as f:
            f.write(b"x" * 1000); f.flush()
            print("writing", flush=True)
            time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "writing"
        temps = list(tmp_path.glob(".last.pt.*.tmp"))
        assert len(temps) == 1
        # while the writer lives, another write does not touch its temporary
        with atomic_write(tmp_path / "last.pt", "wb") as f:
            f.write(b"ours")
        assert temps[0].exists()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert temps[0].exists()   # the kill left it behind
    with atomic_write(tmp_path / "last.pt", "wb") as f:
        f.write(b"next")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]   # before: the .tmp stayed


def test_a_folder_is_listed_once_per_process(tmp_path, monkeypatch):
    calls = []
    real = os.listdir
    monkeypatch.setattr(mio.os, "listdir", lambda p: calls.append(p) or real(p))
    for i in range(50):   # e.g. write_phantom_dataset's images: not 50 listings of a growing folder
        with atomic_write(tmp_path / f"{i}.png", "wb") as f:
            f.write(b"x")
    assert calls == [str(tmp_path)]


def test_check_writable(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    assert check_writable(tmp_path / "new" / "deeper" / "x.parquet", "output") == \
        tmp_path / "new" / "deeper" / "x.parquet"
    assert not (tmp_path / "new").exists()   # nothing created
    check_writable(tmp_path / "file", "output")            # an existing file is replaced
    check_writable(tmp_path, "out", folder=True)
    check_writable(tmp_path / "run" / "a", "train.out_dir", folder=True)
    with pytest.raises(ValueError, match=r"cannot write output .*file.*is not a folder"):
        check_writable(tmp_path / "file" / "x.parquet", "output")
    with pytest.raises(ValueError, match="cannot write train.out_dir .* exists and is not a folder"):
        check_writable(tmp_path / "file", "train.out_dir", folder=True)
    with pytest.raises(ValueError, match="it is a folder, expected a file name"):
        check_writable(tmp_path, "output")
    # a folder the user may not write into (chmod does not stop root, so ask os.access)
    real_access = os.access
    monkeypatch.setattr(mio.os, "access", lambda p, m: False if Path(p) == tmp_path else real_access(p, m))
    with pytest.raises(ValueError, match=r"cannot write output .* folder .* is not writable"):
        check_writable(tmp_path / "sub" / "x.csv", "output")
