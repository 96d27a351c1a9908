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


# --- issue 24: outputs write through links, to devices and FIFOs, and keep the replaced file's mode


def test_atomic_write_writes_through_a_symlink(tmp_path):
    target = tmp_path / "real" / "target.csv"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    with atomic_write(link) as f:
        f.write("new")
    assert link.is_symlink()                 # before: the link became a regular file
    assert target.read_text() == "new"       # before: the target kept "old"
    # the temporary lived in the target's folder, and nothing is left anywhere
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.csv", "real"]
    assert [p.name for p in target.parent.iterdir()] == ["target.csv"]
    # a chain of links, and a dangling link (its target is created)
    chain = tmp_path / "chain.csv"
    chain.symlink_to(link)
    with atomic_write(chain) as f:
        f.write("newer")
    assert chain.is_symlink() and link.is_symlink() and target.read_text() == "newer"
    dangling = tmp_path / "dangling.csv"
    dangling.symlink_to(tmp_path / "real" / "made.csv")
    with atomic_write(dangling) as f:
        f.write("made")
    assert dangling.is_symlink() and (tmp_path / "real" / "made.csv").read_text() == "made"


def test_atomic_write_to_a_fifo_and_a_character_device_writes_directly(tmp_path):
    # a null device of our own (never /dev/null: as root, the old code renamed a file over it)
    null = tmp_path / "null"
    try:
        os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except OSError:
        null = None   # no CAP_MKNOD: the FIFO below still checks the direct write
    if null is not None:
        with atomic_write(null) as f:   # before: a regular file renamed over the device
            f.write("gone")
        assert null.is_char_device()
        null.unlink()
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    reader = subprocess.Popen([sys.executable, "-c", f"print(open({str(fifo)!r}).read(), end='')"],
                              stdout=subprocess.PIPE, text=True)
    with atomic_write(fifo) as f:
        f.write("through the pipe")
    assert reader.communicate(timeout=60)[0] == "through the pipe"
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)   # still a FIFO, not a regular file
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"]


def test_atomic_write_dash_is_standard_output(tmp_path):
    code = ("from medtrim_ext.utils.io import atomic_write\n"
            "print('before', flush=True)\n"
            "with atomic_write('-', newline='') as f: f.write('a,b\\r\\n')\n"
            "with atomic_write('-', 'wb') as f: f.write(b'bytes\\n')\n"
            "print('after')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, check=True).stdout
    assert out == b"before\na,b\r\nbytes\nafter\n"
    assert not (tmp_path / "-").exists()


def test_atomic_write_refuses_other_non_regular_targets_by_name(tmp_path):
    import socket

    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match=r"cannot write .*sub'.*is a folder"):
        with atomic_write(tmp_path / "sub") as f:
            f.write("x")
    sock_path = tmp_path / "s.sock"
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(sock_path))
        link = tmp_path / "to-sock"
        link.symlink_to(sock_path)
        for target in (sock_path, link):
            with pytest.raises(ValueError, match=r"cannot write .*s\.sock.*not a regular file"):
                with atomic_write(target) as f:
                    f.write("x")
            with pytest.raises(ValueError, match=r"s\.sock.*not a regular file"):
                check_writable(target, "output")
    finally:
        s.close()
    assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)


def test_check_writable_follows_links_and_accepts_streams(tmp_path, monkeypatch):
    check_writable("-", "output")
    check_writable("/dev/null", "output")   # before: "folder '/dev' is not writable"
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    check_writable(fifo, "output")
    # a link in a read-only folder to a file in a writable one: the target's folder counts
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir(), rw.mkdir()
    (ro / "link.csv").symlink_to(rw / "t.csv")
    real_access = os.access
    monkeypatch.setattr(mio.os, "access", lambda p, m: False if Path(p) == ro else real_access(p, m))
    check_writable(ro / "link.csv", "output")
    with pytest.raises(ValueError, match="is not writable"):
        check_writable(ro / "plain.csv", "output")


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o444])
def test_overwriting_keeps_the_replaced_files_mode(tmp_path, umask, mode):
    umask(0o022)
    out = tmp_path / "private.csv"
    out.write_text("old")
    os.chmod(out, mode)
    with atomic_write(out) as f:
        f.write("new")
    assert out.read_text() == "new" and _mode(out) == mode   # before: 0644 whatever it was
    link = tmp_path / "link.csv"
    link.symlink_to(out)
    with atomic_write(link, "wb") as f:
        f.write(b"newer")
    assert _mode(out) == mode
    with atomic_write(tmp_path / "fresh.csv") as f:   # a new file: the umask's mode
        f.write("x")
    assert _mode(tmp_path / "fresh.csv") == 0o644


def test_dev_fd_links_are_written_in_place(tmp_path):
    # /dev/stdout -> /proc/self/fd/1 -> the file the shell redirected to (here deleted): the old
    # write renamed a temporary over the link itself; it must go to what the descriptor is
    code = ("import os\nfrom medtrim_ext.utils.io import atomic_write, check_writable\n"
            "check_writable('/dev/fd/1', 'output')\n"
            "print('earlier output', flush=True)\n"
            "with atomic_write('/dev/fd/1') as f: f.write('to fd 1\\n')\n")
    with open(tmp_path / "redirected.txt", "w+") as out:
        os.unlink(tmp_path / "redirected.txt")   # a deleted file: its /proc link names no path
        subprocess.run([sys.executable, "-c", code], stdout=out, check=True, cwd=tmp_path)
        out.seek(0)
        assert out.read() == "earlier output\nto fd 1\n"   # appended: what was written stays
    assert list(tmp_path.iterdir()) == []
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(ValueError, match=r"cannot write output .*loop'"):
        check_writable(loop, "output")
    with pytest.raises(ValueError, match=r"cannot write output .*loop'"):
        with atomic_write(loop) as f:
            f.write("x")
