"""Readers of report collections: CSV/Parquet tables, the MIMIC-CXR report tree, IU/OpenI XML.

Every reader returns :class:`Reports` (study ids, report texts, and per-report metadata). Texts
carry their section headers ("FINDINGS: ...") so that the extractor's section filter applies the
same way to every source. Unreadable or empty inputs raise ``ValueError`` naming the path.
"""

from __future__ import annotations

import re
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

_ID_COLUMNS = ("study_id", "id", "uid", "report_id", "filename", "path")
_TEXT_COLUMNS = ("report", "text", "report_text")


@dataclass
class Reports:
    """Reports of one source: ``ids[i]`` is the study id of ``texts[i]``; ``meta[i]`` is a dict
    of reader-specific fields (e.g. ``subject_id`` for MIMIC, MeSH tags for IU)."""

    ids: list
    texts: list
    source: str
    kind: str
    meta: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)


def read_reports(path) -> Reports:
    """Read reports from ``path``, by its kind:

    - ``.csv`` / ``.parquet``: a ``findings`` and/or ``impression`` column, or a ``report``
      (``text``) column; ids from ``study_id`` / ``id`` (else the row number);
    - a folder of ``.txt`` files (the MIMIC-CXR ``files/p10/p10000032/s5....txt`` tree); ids are
      the file stems (``s50414267``);
    - a folder of ``.xml`` files or a ``.tgz`` / ``.tar.gz`` / ``.tar`` of them (IU / OpenI).
    """
    p = Path(path)
    if not p.exists():
        raise ValueError(f"reports path {str(p)!r} does not exist")
    name = p.name.lower()
    if p.is_dir():
        if next(p.rglob("*.xml"), None) is not None:
            reports = _read_iu_dir(p)
        else:
            reports = _read_text_tree(p)
    elif name.endswith((".tgz", ".tar.gz", ".tar")):
        reports = _read_iu_tar(p)
    elif name.endswith(".xml"):
        reports = _collect([_parse_iu(_read_bytes(p), str(p))], str(p), "iu-xml")
    elif name.endswith((".csv", ".csv.gz", ".parquet", ".pq")):
        reports = _read_table(p)
    elif name.endswith(".txt"):
        reports = _collect([(p.stem, _read_text(p), {"path": str(p)})], str(p), "text")
    else:
        raise ValueError(f"reports path {str(p)!r}: unknown kind (expected .csv, .parquet, "
                         ".tgz/.tar of IU XML, or a folder of .txt / .xml reports)")
    if not len(reports):
        raise ValueError(f"reports path {str(p)!r} contains no reports")
    return reports


# -- tables --------------------------------------------------------------------------------------
def _read_table(p: Path) -> Reports:
    import pandas as pd

    try:
        if p.name.lower().endswith((".parquet", ".pq")):
            df = pd.read_parquet(p)
        else:
            df = pd.read_csv(p, dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises many types (ParserError, ArrowInvalid, OSError ...)
        raise ValueError(f"cannot read table {str(p)!r}: {exc}") from None
    cols = {str(c).strip().lower(): c for c in df.columns}
    findings, impression = cols.get("findings"), cols.get("impression")
    text_col = next((cols[c] for c in _TEXT_COLUMNS if c in cols), None)
    if findings is None and impression is None and text_col is None:
        raise ValueError(f"table {str(p)!r} needs a 'findings' and/or 'impression' column, or a "
                         f"'report' / 'text' column; it has {list(df.columns)}")
    id_col = next((cols[c] for c in _ID_COLUMNS if c in cols), None)

    def cell(row, col) -> str:
        v = row[col] if col is not None else ""
        return "" if v is None or (isinstance(v, float) and v != v) else str(v)

    items = []
    for k, row in enumerate(df.to_dict("records")):
        if findings is not None or impression is not None:
            parts = []
            if findings is not None and cell(row, findings).strip():
                parts.append(f"FINDINGS: {cell(row, findings)}")
            if impression is not None and cell(row, impression).strip():
                parts.append(f"IMPRESSION: {cell(row, impression)}")
            text = "\n".join(parts)
            if not text and text_col is not None:
                text = cell(row, text_col)
        else:
            text = cell(row, text_col)
        sid = cell(row, id_col) if id_col is not None else str(k)
        items.append((sid or str(k), text, {}))
    return _collect(items, str(p), "table")


# -- MIMIC-CXR tree ------------------------------------------------------------------------------
def _read_text_tree(root: Path) -> Reports:
    files = sorted(root.rglob("*.txt"))
    items = []
    for f in files:
        meta = {"path": str(f.relative_to(root))}
        if f.parent.name.startswith("p") and f.parent.name[1:].isdigit():
            meta["subject_id"] = f.parent.name  # files/p10/p10000032/s50414267.txt
        items.append((f.stem, _read_text(f), meta))
    return _collect(items, str(root), "text-tree")


def _read_text(p: Path) -> str:
    try:
        return p.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ValueError(f"cannot read report {str(p)!r}: {exc}") from None


def _read_bytes(p: Path) -> bytes:
    try:
        return p.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read report {str(p)!r}: {exc}") from None


# -- IU / OpenI XML ------------------------------------------------------------------------------
def _read_iu_dir(root: Path) -> Reports:
    items = [_parse_iu(_read_bytes(f), str(f)) for f in sorted(root.rglob("*.xml"))]
    return _collect(items, str(root), "iu-xml")


def _read_iu_tar(p: Path) -> Reports:
    items = []
    try:
        with tarfile.open(p) as tar:
            members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".xml")),
                             key=lambda m: _natural_key(m.name))
            for m in members:
                f = tar.extractfile(m)
                items.append(_parse_iu(f.read(), f"{p}:{m.name}"))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ValueError(f"cannot read archive {str(p)!r}: {exc}") from None
    return _collect(items, str(p), "iu-xml")


def _parse_iu(data: bytes, where: str):
    """(id, text with section headers, meta with MeSH tags) of one IU report."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise ValueError(f"{where}: not valid XML: {exc}") from None
    uid = root.find("uId")
    sid = uid.get("id") if uid is not None and uid.get("id") else Path(where.split(":")[-1]).stem
    parts = []
    for node in root.iter("AbstractText"):
        label = (node.get("Label") or "").strip()
        body = "".join(node.itertext()).strip()
        if body:
            parts.append(f"{label.upper()}: {body}" if label else body)
    mesh = root.find("MeSH")
    meta = {
        "mesh_major": [e.text.strip() for e in mesh.iter("major") if e.text] if mesh is not None else [],
        "mesh_automatic": [e.text.strip() for e in mesh.iter("automatic") if e.text] if mesh is not None else [],
    }
    return sid, "\n".join(parts), meta


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _collect(items, source: str, kind: str) -> Reports:
    ids, texts, metas = [], [], []
    for sid, text, meta in items:
        ids.append(str(sid))
        texts.append(text)
        metas.append(meta)
    return Reports(ids=ids, texts=texts, source=source, kind=kind, meta=metas)
