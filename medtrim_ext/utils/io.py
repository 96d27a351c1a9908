"""File input/output: atomic writes (no half-written outputs after a crash) and record files."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import threading
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

# a temporary file or folder next to a target is named ".<target name>.<owner>.<random>.tmp",
# where <owner> is "<pid>-<host hash>", so a later writer can tell a dead writer's leftover
# (removed) from a live one's (kept)
_TMP_SUFFIXES = (".tmp", ".old")
_OWNED = re.compile(r"(\d+)-([0-9a-f]{6})\.[a-z0-9_]+")   # what follows ".<target name>."
_LEGACY = re.compile(r"[a-z0-9_]{8}")                      # older versions: mkstemp's random part


def current_umask() -> int:
    """The process's umask, read without changing it where the OS allows (Linux: /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)   # no other way to read it: set and restore at once
    os.umask(mask)
    return mask


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]


def temp_prefix(path: str | Path) -> str:
    """Prefix of this process's temporary names for ``path`` (for ``tempfile.mkstemp``/``mkdtemp``
    with ``dir=path.parent``); :func:`remove_stale_temps` recognises the owner in it."""
    return f".{Path(path).name}.{os.getpid()}-{_host_tag()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:   # e.g. PermissionError: alive, owned by another user
        return True
    return True


def remove_stale_temps(path: str | Path, *, _names: list[str] | None = None) -> list[Path]:
    """Remove the temporary files and folders a killed writer of ``path`` left next to it.

    Only leftovers of this machine whose writer process is gone are removed; a live writer's
    temporary (another process, or another thread of this one) and one written on another machine
    (a shared file system) are kept. Leftovers of older versions (no owner in the name) are removed
    when they are older than this process. Returns what was removed.
    """
    path = Path(path)
    head = f".{path.name}."
    if _names is None:
        try:
            _names = os.listdir(path.parent)
        except OSError:
            return []
    me, host = os.getpid(), _host_tag()
    removed = []
    for name in _names:
        if not name.startswith(head) or not name.endswith(_TMP_SUFFIXES):
            continue
        entry = path.parent / name
        middle = name[len(head):-4]          # "<pid>-<host>.<random>" or "<random>"
        owned = _OWNED.fullmatch(middle)
        if owned:
            pid = int(owned.group(1))
            if owned.group(2) != host or pid == me or _pid_alive(pid):
                continue
        elif not _LEGACY.fullmatch(middle):
            continue   # another target's temporary (e.g. of "<name>.bak")
        else:   # no owner in the name: stale only when older than this process
            try:
                if entry.lstat().st_mtime >= _process_start_time():
                    continue
            except OSError:
                continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                os.unlink(entry)
        except OSError:
            continue   # gone already, or not ours to remove (permissions): leave it
        removed.append(entry)
    return removed


# folder -> the temporary-looking names it held when this process first wrote into it; a folder
# is listed once per process (not once per write: a folder of N outputs would cost N^2)
_TEMP_NAMES: dict[str, list[str]] = {}
_TEMP_NAMES_LOCK = threading.Lock()


def _clean_before_write(path: Path) -> None:
    folder = os.path.abspath(path.parent)
    with _TEMP_NAMES_LOCK:
        names = _TEMP_NAMES.get(folder)
        if names is None:
            try:
                names = [n for n in os.listdir(folder) if n.startswith(".") and n.endswith(_TMP_SUFFIXES)]
            except OSError:
                names = []
            _TEMP_NAMES[folder] = names
        mine = [n for n in names if n.startswith(f".{path.name}.")]
        if not mine:
            return
        removed = {p.name for p in remove_stale_temps(path, _names=mine)}
        # forget what is gone (removed, or finished by its live writer); keep live writers' names
        names[:] = [n for n in names if n not in removed and os.path.lexists(os.path.join(folder, n))]


@functools.lru_cache(maxsize=None)
def _process_start_time() -> float:
    """Wall-clock start of this process (Linux: /proc; elsewhere: now, so nothing counts as older)."""
    try:
        with open("/proc/self/stat", encoding="ascii") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat", encoding="ascii") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        import time

        return time.time()


def make_temp_dir(path: str | Path, suffix: str = ".tmp") -> Path:
    """A new empty folder next to ``path`` for building it before a rename, with the permissions
    a plain ``mkdir`` would give (``0o777`` less the umask, not ``mkdtemp``'s 0700); stale
    leftovers of killed writers of ``path`` are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_before_write(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=temp_prefix(path), suffix=suffix))
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


def check_writable(path: str | Path, what: str, *, folder: bool = False) -> Path:
    """Fail fast, before any work, when ``path`` could not be written: ``ValueError`` naming
    ``what`` (e.g. ``"output"``, ``"train.out_dir"``) and the reason.

    ``folder``: ``path`` is an output folder (it may exist, as a folder); else an output file (it
    may exist, not as a folder). Folders that do not exist yet must be creatable: the nearest
    existing one above must be a writable folder. Nothing is created.
    """
    if not folder and str(path) == STDOUT:
        return Path(path)
    path = Path(path)
    if not folder:
        # a link is written through (the target's folder must be writable), a device or a pipe is
        # written directly; anything else that is not a regular file is refused by name
        final, st, direct = output_target(path, what)
        if direct:
            if not os.access(path, os.W_OK):
                raise ValueError(f"cannot write {what} {str(path)!r}: {str(final)!r} is not writable")
            return path
        if final != path.absolute():
            check_writable(final, what)
            return path
    if os.path.lexists(path):
        if folder and not path.is_dir():
            raise ValueError(f"cannot write {what} {str(path)!r}: it exists and is not a folder")
        if not folder and path.is_dir():
            raise ValueError(f"cannot write {what} {str(path)!r}: it is a folder, expected a file name")
    holder = path if folder and path.is_dir() else path.parent
    while not os.path.lexists(holder) and holder != holder.parent:
        holder = holder.parent
    if not holder.is_dir():
        raise ValueError(f"cannot write {what} {str(path)!r}: {str(holder)!r} is not a folder")
    if not os.access(holder, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write {what} {str(path)!r}: folder {str(holder)!r} is not writable")
    return path


STDOUT = "-"   # an output path that means standard output


def output_target(path: str | Path, what: str = "output") -> tuple[Path, os.stat_result | None, bool]:
    """Where writing ``path`` lands: ``(final, st, direct)``. ``final`` is the path after following
    every symlink (writing replaces a link's target, never the link), ``st`` its ``stat`` (None
    when it does not exist yet), ``direct`` whether it must be opened and written in place rather
    than replaced by a rename: a character device or a FIFO, or a file reached through a link
    that does not name it (``/dev/stdout`` -> ``/proc/self/fd/1`` -> a deleted or redirected file).

    Raises ``ValueError`` naming ``what`` and the path for a target that is neither a regular
    file, a character device nor a FIFO (a folder, a socket, a block device), or a link loop.
    """
    path = Path(path)
    final = Path(os.path.realpath(path))
    try:
        st = os.stat(path)   # follows links, the /proc/self/fd ones included
    except (FileNotFoundError, NotADirectoryError):   # the caller's folder checks say why
        return final, None, False
    except OSError as exc:   # ELOOP (a link cycle), EACCES ...
        raise ValueError(f"cannot write {what} {str(path)!r}: {exc.strerror or exc}") from None
    shown = repr(str(path)) + ("" if final == path.absolute() else f" (-> {str(final)!r})")
    if stat.S_ISDIR(st.st_mode):
        raise ValueError(f"cannot write {what} {shown}: it is a folder, expected a file name")
    if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
        return final, st, True
    if not stat.S_ISREG(st.st_mode):
        kind = "a socket" if stat.S_ISSOCK(st.st_mode) else (
            "a block device" if stat.S_ISBLK(st.st_mode) else "special")
        raise ValueError(f"cannot write {what} {shown}: it is {kind}, not a regular file, a "
                         "character device or a FIFO")
    try:
        same = os.path.samefile(final, path)
    except OSError:
        same = False
    return final, st, not same


def is_stream_output(path: str | Path) -> bool:
    """Whether ``path`` is written as a stream, in place: ``"-"`` (standard output), a character
    device, a FIFO, or a ``/dev/fd`` link (see :func:`output_target`). Such an output has no
    file name to choose a format by, and shares the terminal or the pipe with nothing else."""
    if str(path) == STDOUT:
        return True
    try:
        return output_target(path)[2]
    except ValueError:
        return False


def check_not_input(output: str | Path, inputs: dict, what: str = "output") -> None:
    """Refuse, before any work, an output that is one of the inputs (``{role: path}``, e.g.
    ``{"records": ..., "--candidates": ...}``; None entries are skipped): the same file after
    following links (hard links included), which writing the output would destroy. Raises
    ``ValueError`` naming both."""
    if str(output) == STDOUT:
        return
    try:
        out = os.stat(output)
    except OSError:   # does not exist yet: cannot be an input
        return
    if not stat.S_ISREG(out.st_mode):   # a device or a pipe is written in place, not replaced
        return
    for role, source in inputs.items():
        if source is None or str(source) == STDOUT:
            continue
        try:
            if os.path.isdir(source):   # a folder input (a model folder): the output is one of its files
                if os.path.samefile(os.path.dirname(os.path.abspath(output)), source):
                    raise ValueError(f"{what} {str(output)!r} would replace a file of {role} "
                                     f"{str(source)!r}: writing it would destroy the input; choose "
                                     f"another {what}")
                continue
            same = os.path.samefile(output, source)
        except OSError:
            continue
        if same:
            raise ValueError(f"{what} {str(output)!r} is the same file as {role} {str(source)!r}: "
                             f"writing it would destroy the input; choose another {what}")


def check_outputs_not_inputs(folder: str | Path, names, inputs: dict, what: str) -> None:
    """:func:`check_not_input` for each file ``names`` that a command writes into ``folder``
    (``what`` names the folder's role, e.g. ``"train.out_dir"``)."""
    for name in names:
        check_not_input(Path(folder) / name, inputs, f"{what} file")


# a cell that a spreadsheet reads as a formula starts with one of these (OWASP's CSV-injection
# rule); a leading quote makes it text. Cells starting with the quote itself are quoted too, so
# that unescape_csv_cell gives back exactly what was written.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def escape_csv_cell(cell):
    """``cell`` with a leading ``'`` when it is a string a spreadsheet would run as a formula
    (``=HYPERLINK(...)``, ``+1``, ``-2+3``, ``@SUM``, a leading tab or carriage return; and a
    leading ``'``, so that the escape is reversible). Numbers and other strings are unchanged."""
    if isinstance(cell, str) and cell.startswith(_FORMULA_STARTS):
        return "'" + cell
    return cell


def unescape_csv_cell(cell):
    """The inverse of :func:`escape_csv_cell` for a string cell read back."""
    if isinstance(cell, str) and len(cell) > 1 and cell[0] == "'" and cell[1:].startswith(_FORMULA_STARTS):
        return cell[1:]
    return cell


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_kwargs) -> Iterator:
    """Open a temporary file next to ``path``; on success fsync it and rename it over ``path``.

    A crash or an exception leaves the previous ``path`` (or nothing) in place, never a partial file.
    A symlink is followed: the temporary file is made in the final target's folder and renamed
    over the target, so the link stays a link. A character device or a FIFO (``/dev/stdout``, a
    named pipe) is written directly, without a rename, and ``"-"`` is standard output; other
    non-regular targets (a folder, a socket) raise ``ValueError`` naming the path.
    A replaced file keeps its permissions (``chmod 600`` stays 600); a new file gets those
    ``open`` would give (``0o666`` less the umask). Temporary files that a killed writer of
    ``path`` left behind are removed (see :func:`remove_stale_temps`; a folder is listed once per
    process: temporaries that appear in it later are left to the next process).
    """
    if str(path) == STDOUT:
        yield from _write_stdout(mode, open_kwargs)
        return
    target, st, direct = output_target(path)
    if direct:
        # a device or a pipe cannot be replaced by a rename (and must not be: /dev/stdout); append,
        # so that a file behind /dev/stdout keeps what the process wrote to it before
        in_body = False
        try:
            with open(path, mode.replace("w", "a"), **open_kwargs) as f:
                in_body = True
                yield f
                in_body = False
        except OSError as exc:   # /dev/full: ENOSPC
            if isinstance(exc, OutputWriteError) or (in_body and exc.errno not in _WRITE_ERRNOS):
                raise
            raise OutputWriteError(path, exc, in_place=True) from None
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _clean_before_write(target)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=temp_prefix(target), suffix=".tmp")
    except OSError as exc:   # /proc/version: root may "write" /proc, but no file can be made there
        raise OutputWriteError(path, exc, f"no file can be created in {str(target.parent)!r}",
                               existed=st is not None) from None
    in_body = False
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            # mkstemp creates 0600: keep the replaced file's mode, else what open would give
            os.fchmod(f.fileno(), stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~current_umask())
            in_body = True
            yield f
            in_body = False
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        # a full disk (ENOSPC) while writing: named, and the old file (or none) is left in place;
        # other OSErrors of the caller's own code inside the block stay as they are
        if isinstance(exc, OSError) and not isinstance(exc, OutputWriteError) and (
                not in_body or exc.errno in _WRITE_ERRNOS):
            raise OutputWriteError(path, exc, existed=st is not None) from None
        raise


# errors of writing itself, whichever call inside an atomic_write block meets them
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS})


class OutputWriteError(OSError, ValueError):
    """An output that could not be written (full disk, a folder where no file can be made): an
    OSError with the original errno, and a ValueError whose message names the output, so that the
    command line reports it in one line (exit 2) instead of a traceback."""

    def __init__(self, path, exc: OSError, why: str | None = None, in_place: bool = False,
                 existed: bool = False):
        reason = exc.strerror or str(exc)
        # a replaced file is left as it was; a device or pipe written in place may hold a part
        kept = "" if in_place else "; it was left as it was" if existed else "; nothing was written"
        super().__init__(f"cannot write {str(path)!r}: {why + ': ' if why else ''}{reason}{kept}")
        self.errno, self.strerror, self.filename = exc.errno, exc.strerror, str(path)

    def __str__(self) -> str:   # OSError's would be "[Errno ...]" only when built with an errno
        return self.args[0]


def _write_stdout(mode: str, open_kwargs: dict) -> Iterator:
    """Standard output as a file opened with ``mode`` and ``open_kwargs`` (a duplicate of its
    descriptor, so that closing it leaves ``sys.stdout`` open)."""
    import sys

    sys.stdout.flush()
    try:
        fd = os.dup(sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):   # replaced by an object without a descriptor
        yield sys.stdout.buffer if "b" in mode else sys.stdout
        return
    with open(fd, mode, **open_kwargs) as f:
        yield f


class RecordsFile(NamedTuple):
    """The records of a file, their ids, and which ids the file gave (see :func:`load_records`)."""

    records: list[dict]
    ids: list[str]     # the id an item gives, else a generated "#<position>" (see utils.ids)
    given: list[bool]  # whether ids[k] came from the file (False: generated)


PARQUET_SUFFIXES = (".parquet", ".pq")
_PARQUET_MAGIC = b"PAR1"


def read_records(path: str | Path) -> tuple[list[dict], list]:
    """Records and their ids from a records file (see :func:`load_records`); an item that gives
    no id gets a generated one (``"#<position>"``)."""
    loaded = load_records(path)
    return loaded.records, loaded.ids


def load_records(path: str | Path) -> RecordsFile:
    """Records, ids and which ids were given, from what ``medtrim extract`` writes or by hand:

    - JSON lines (``.jsonl``) or a JSON list (``.json``; other names are recognised by content);
      each item is a record ``{disease: {"adjs": [...], "dirs": [...]}}`` or
      ``{"id": ..., "entities": record}``;
    - Parquet (``.parquet``/``.pq``, or any name with Parquet content): an ``entities`` column of
      JSON records and a ``study_id`` (or ``id``) column, as written by ``medtrim extract``.

    Ids follow :mod:`medtrim_ext.utils.ids`: ``"study_id"`` or ``"id"``, a string or an integer;
    an item without one (a bare record, a missing or empty id) gets a generated id (``"#<position>"``)
    that no given id equals, with ``given`` False; a repeated id is one study (its records never
    pair), and must be written the same way (``1`` and ``"1"`` raise, naming both lines). An
    object with an id but no ``"entities"`` is refused (its id would be read as a disease). Raises
    ``ValueError`` naming the file (and line or row). Equal records of a file may be one shared
    dict (each distinct record text is parsed once): treat them as read-only.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read records file {str(path)!r}: {exc}") from None
    if path.suffix.lower() in PARQUET_SUFFIXES or data[:4] == _PARQUET_MAGIC:
        return _records_from_parquet(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"records file {str(path)!r} is neither UTF-8 text (byte {exc.start} is "
                         "not) nor Parquet: expected JSON lines, a JSON list or Parquet, as written "
                         "by `medtrim extract`") from None
    if not text.strip():
        raise ValueError(f"records file {str(path)!r} is empty")
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json"):  # recognise the format by its first character
        suffix = ".json" if text.lstrip().startswith("[") else ".jsonl"
        if not text.lstrip().startswith(("[", "{")):
            raise ValueError(f"records file {str(path)!r}: unknown format (expected JSON lines, a "
                             "JSON list or Parquet, as written by `medtrim extract`)")
    if suffix == ".jsonl":
        items, places, parsed = [], [], {}
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            places.append(f"line {lineno}")
            try:
                items.append(_json_line(line, parsed))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from None
            except RecursionError:   # [[[[...: json recurses once per level
                raise ValueError(f"{path}:{lineno}: JSON nested too deeply to read") from None
    else:
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON: {exc}") from None
        except RecursionError:   # [[[[...: json recurses once per level
            raise ValueError(f"{path}: JSON nested too deeply to read") from None
        if not isinstance(items, list):
            raise ValueError(f"{path}: expected a JSON list of records, got {type(items).__name__}")
        places = [f"item {k}" for k in range(len(items))]
    from .ids import ID_KEYS, item_id

    records, raw_ids = [], []
    for item, place in zip(items, places):
        if not isinstance(item, dict):
            raise ValueError(f"{path}: {place} must be an object, got {type(item).__name__}")
        if "entities" in item:
            records.append(item["entities"])
            raw_ids.append(item_id(item, f"{path}: {place}"))
        elif any(k in item for k in ID_KEYS):
            raise ValueError(f"{path}: {place} has an id ({', '.join(k for k in ID_KEYS if k in item)}) "
                             "but no 'entities': write {\"id\": ..., \"entities\": record}")
        else:
            records.append(item)
            raw_ids.append(None)
    return _records_file(records, raw_ids, places, str(path))


_JSON = json.JSONDecoder()
_ENTITIES_AFTER_ID = ', "entities": '
# a JSON string without escapes or control characters (its text is its value), or a JSON integer
_PLAIN_ID = re.compile(r'"([^"\\\x00-\x1f]*)"|(-?(?:0|[1-9][0-9]*))(?=,)')


def _json_line(line: str, parsed: dict):
    """``json.loads(line)``, with the record of a line ``{"id": X, "entities": E}`` (as ``json.dumps``
    and so ``medtrim extract`` write it; ``"study_id"`` too) parsed once per distinct text of
    ``E``, kept in ``parsed``: a collection's records repeat heavily (the IU reports: 22%
    distinct) and parsing is most of reading. Any other line, or one whose parts do not parse
    alone, is parsed whole, so the result and the error are those of ``json.loads(line)``."""
    for key in ("id", "study_id"):
        head = '{"' + key + '": '
        if not line.startswith(head):
            continue
        plain = _PLAIN_ID.match(line, len(head))   # "s123" or 42: read without the decoder
        if plain is not None:
            value, end = (plain[1] if plain[1] is not None else int(plain[2])), plain.end()
        else:
            try:
                value, end = _JSON.raw_decode(line, len(head))
            except json.JSONDecodeError:
                break
        if not (line.startswith(_ENTITIES_AFTER_ID, end) and line.endswith("}")):
            break
        text = line[end + len(_ENTITIES_AFTER_ID):-1]
        record = parsed.get(text)
        if record is None:
            try:
                record = json.loads(text)
            except (json.JSONDecodeError, RecursionError):   # "{...}, "id": 2": the whole line says
                break
            parsed[text] = record
        return {key: value, "entities": record}
    return json.loads(line)


def _records_file(records: list, raw_ids: list, places: list, source: str) -> RecordsFile:
    from .ids import resolve_ids

    # repeats: several records of one study (e.g. one per image), which never pair with each other
    ids, given = resolve_ids(raw_ids, places, f"records file {source!r}", allow_repeats=True)
    return RecordsFile(records, ids, given)


def read_parquet_columns(path, columns: Sequence[str] | None = None, *, what: str = "Parquet file",
                         present_only: bool = False) -> dict[str, list]:
    """The columns of a Parquet file as ``{name: [python values]}`` (all of them, or ``columns``;
    with ``present_only`` the asked-for columns the file lacks are left out instead of being an
    error); raises ``ValueError`` naming the file when it cannot be read (``what`` names its role
    in the message: "entity cache", "records file" ...). The one place that reads Parquet.

    Use this rather than ``pandas.read_parquet`` where pyarrow is older than 25 (the pins of
    Python < 3.12, where spaCy 3.7 holds numpy at 1 and so pyarrow at 21): pyarrow 21-24 reading
    Parquet from a *Python file object* with several Arrow threads aborts the interpreter at exit
    now and then ("terminate called without an active exception", exit status 134). pandas hands
    it such a file object; neither pandas nor torch is needed for the abort (a bare
    ``pq.read_table(open(path, "rb"))`` with 16 threads: 6 of 12 runs on pyarrow 21, 8 of 12 on
    23 and 24, none on 25 and 26). Reading by path has not aborted in any run.
    """
    from .extras import import_extra

    # Parquet is not in the core install: JSON lines are; name the extra rather than fail bare
    pq = import_extra("pyarrow.parquet", "extract", f"reading the Parquet {what}")
    path = Path(path)
    try:
        with pq.ParquetFile(str(path), pre_buffer=False) as f:
            if columns is not None and present_only:
                columns = [c for c in columns if c in f.schema_arrow.names]
            table = f.read(columns=list(columns) if columns is not None else None, use_threads=False)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, KeyError (unknown column) ...
        raise ValueError(f"cannot read {what} {str(path)!r}: {exc}") from None
    return table.to_pydict()


def _records_from_parquet(path: Path) -> RecordsFile:
    columns = read_parquet_columns(path, ("entities", "study_id", "id"), what="records file",
                                   present_only=True)
    if "entities" not in columns:
        raise ValueError(f"records file {str(path)!r} has no 'entities' column (a Parquet file from "
                         "`medtrim extract` has one, with the record of each report as JSON)")
    ids = columns.get("study_id", columns.get("id"))
    records, parsed = [], {}
    for row, cell in enumerate(columns["entities"]):
        if isinstance(cell, str):
            try:
                # equal cells (records repeat heavily) are parsed once and share one record
                record = parsed.get(cell)
                if record is None:
                    record = parsed[cell] = json.loads(cell)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: row {row}: 'entities' is not valid JSON: {exc.msg}") from None
            except RecursionError:
                raise ValueError(f"{path}: row {row}: 'entities' is JSON nested too deeply to read") from None
        elif cell is None:
            raise ValueError(f"{path}: row {row}: 'entities' is empty (a report with no finding is '{{}}')")
        else:
            raise ValueError(f"{path}: row {row}: 'entities' must be a JSON string, got "
                             f"{type(cell).__name__}")
        records.append(record)
    n = len(records)
    return _records_file(records, ids if ids is not None else [None] * n,
                         [f"row {k}" for k in range(n)], str(path))
