"""File input/output: atomic writes (no half-written outputs after a crash) and record files."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator, NamedTuple


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_kwargs) -> Iterator:
    """Open a temporary file next to ``path``; on success fsync it and rename it over ``path``.

    A crash or an exception leaves the previous ``path`` (or nothing) in place, never a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class RecordsFile(NamedTuple):
    """The records of a file, their ids, and which ids the file gave (see :func:`load_records`)."""

    records: list[dict]
    ids: list          # the id an item gives, else its position in the file
    given: list[bool]  # whether ids[k] came from the file (False: a position)


PARQUET_SUFFIXES = (".parquet", ".pq")
_PARQUET_MAGIC = b"PAR1"


def read_records(path: str | Path) -> tuple[list[dict], list]:
    """Records and their ids from a records file (see :func:`load_records`); the id of an item
    that gives none is its position in the file."""
    loaded = load_records(path)
    return loaded.records, loaded.ids


def load_records(path: str | Path) -> RecordsFile:
    """Records, ids and which ids were given, from what ``medtrim extract`` writes or by hand:

    - JSON lines (``.jsonl``) or a JSON list (``.json``; other names are recognised by content);
      each item is a record ``{disease: {"adjs": [...], "dirs": [...]}}`` or
      ``{"id": ..., "entities": record}``;
    - Parquet (``.parquet``/``.pq``, or any name with Parquet content): an ``entities`` column of
      JSON records and a ``study_id`` (or ``id``) column, as written by ``medtrim extract``.

    An item without an id (a bare record, a missing or empty id) gets its position in the file
    as its id, with ``given`` False. Raises ``ValueError`` naming the file (and line or row).
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
        items = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from None
    else:
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON: {exc}") from None
        if not isinstance(items, list):
            raise ValueError(f"{path}: expected a JSON list of records, got {type(items).__name__}")
    out = RecordsFile([], [], [])
    for k, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"{path}: item {k} must be an object, got {type(item).__name__}")
        if "entities" in item:
            _add_record(out, item["entities"], item.get("id"), k)
        else:
            _add_record(out, item, None, k)
    return out


def _add_record(out: RecordsFile, record, record_id, position: int) -> None:
    given = record_id is not None and record_id != ""
    out.records.append(record)
    out.ids.append(record_id if given else position)
    out.given.append(given)


def read_parquet_columns(path: Path, wanted: tuple[str, ...]) -> dict[str, list]:
    """The columns of ``wanted`` that a Parquet file has, as Python lists (the one place that
    reads Parquet for :func:`load_records`). Raises ``ValueError`` naming the file."""
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(path)
        present = [c for c in wanted if c in f.schema_arrow.names]
        table = f.read(columns=present, use_threads=False)
    except Exception as exc:  # pyarrow raises its own types (ArrowInvalid, OSError, ...)
        raise ValueError(f"records file {str(path)!r} is not a readable Parquet file: {exc}") from None
    return {c: table.column(c).to_pylist() for c in present}


def _records_from_parquet(path: Path) -> RecordsFile:
    columns = read_parquet_columns(path, ("entities", "study_id", "id"))
    if "entities" not in columns:
        raise ValueError(f"records file {str(path)!r} has no 'entities' column (a Parquet file from "
                         "`medtrim extract` has one, with the record of each report as JSON)")
    ids = columns.get("study_id", columns.get("id"))
    out = RecordsFile([], [], [])
    for row, cell in enumerate(columns["entities"]):
        if isinstance(cell, str):
            try:
                record = json.loads(cell)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: row {row}: 'entities' is not valid JSON: {exc.msg}") from None
        elif cell is None:
            raise ValueError(f"{path}: row {row}: 'entities' is empty (a report with no finding is '{{}}')")
        else:
            raise ValueError(f"{path}: row {row}: 'entities' must be a JSON string, got "
                             f"{type(cell).__name__}")
        _add_record(out, record, None if ids is None else ids[row], row)
    return out
