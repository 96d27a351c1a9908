"""Writing extracted entities (Parquet or JSON records) and summarizing them (read them back
with :func:`medtrim_ext.utils.io.load_records` or :func:`medtrim_ext.utils.io.read_parquet_columns`)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Sequence

from ..utils.io import atomic_write, is_stream_output
from .readers import Reports


def write_entities(path, reports: Reports, records: Sequence[dict], classes: Sequence[str]) -> None:
    """Write one row per report, atomically.

    ``.parquet``: columns ``study_id``, ``subject_id`` (when the source has one), ``entities``
    (the record as JSON), ``no_finding`` and one bool column per disease class.
    ``.jsonl`` / ``.json``: ``{"id", "entities"}`` objects, the input of ``medtrim mine``;
    ``"-"`` (standard output), a device or a pipe: JSON lines.
    """
    if len(records) != len(reports):
        raise ValueError(f"{len(records)} records for {len(reports)} reports")
    # "-" (standard output), a device or a pipe: JSON lines, the format `medtrim mine` streams best
    suffix = ".jsonl" if is_stream_output(path) else Path(path).suffix.lower()
    path = path if str(path) == "-" else Path(path)
    if suffix in (".jsonl", ".json"):
        items = [{"id": i, "entities": r} for i, r in zip(reports.ids, records)]
        with atomic_write(path) as f:
            if suffix == ".jsonl":
                f.writelines(json.dumps(x) + "\n" for x in items)
            else:
                json.dump(items, f)
        return
    if suffix not in (".parquet", ".pq"):
        raise ValueError(f"output {str(path)!r}: use a .parquet, .jsonl or .json file name")
    import pandas as pd

    cols = {"study_id": list(reports.ids)}
    if any("subject_id" in m for m in reports.meta):
        cols["subject_id"] = [m.get("subject_id", "") for m in reports.meta]
    cols["entities"] = [json.dumps(r, sort_keys=True) for r in records]
    cols["no_finding"] = [not r for r in records]
    for c in classes:
        cols[c] = [c in r for r in records]
    with atomic_write(path, "wb") as f:
        pd.DataFrame(cols).to_parquet(f, index=False)


def summarize(records: Sequence[dict], classes: Sequence[str], empty: int = 0) -> str:
    """Per-class counts of the records, as a small text table."""
    counts = Counter(c for r in records for c in r)
    n = len(records)
    width = max(len(c) for c in list(classes) + ["no finding"])
    lines = [f"{n} reports ({empty} empty), {sum(1 for r in records if not r)} with no finding"]
    for c in list(classes) + ["no finding"]:
        k = sum(1 for r in records if not r) if c == "no finding" else counts.get(c, 0)
        lines.append(f"  {c:<{width}}  {k:>7}  {100.0 * k / n if n else 0.0:5.1f}%")
    return "\n".join(lines)
