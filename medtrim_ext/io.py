"""File input/output: atomic writes (no half-written outputs after a crash) and record files."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator


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


def read_records(path: str | Path) -> tuple[list[dict], list]:
    """Records and their ids from a JSON list or a JSON-lines file.

    Each item is either a record ``{disease: {"adjs": [...], "dirs": [...]}}`` (its id is its
    position) or ``{"id": ..., "entities": record}``. Raises ``ValueError`` naming the file and line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read records file {str(path)!r}: {exc}") from None
    if not text.strip():
        raise ValueError(f"records file {str(path)!r} is empty")
    if path.suffix == ".jsonl":
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
    records, ids = [], []
    for k, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"{path}: item {k} must be an object, got {type(item).__name__}")
        if "entities" in item:
            records.append(item["entities"])
            ids.append(item.get("id", k))
        else:
            records.append(item)
            ids.append(k)
    return records, ids
