"""Readers of report collections: CSV/Parquet tables, the MIMIC-CXR report tree, IU/OpenI XML.

Every reader returns :class:`Reports` (study ids, report texts, and per-report metadata). Texts
carry their section headers ("FINDINGS: ...") so that the extractor's section filter applies the
same way to every source. Unreadable or empty inputs raise ``ValueError`` naming the path.
"""

from __future__ import annotations

import codecs
import csv
import io
import re
import tarfile
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

_ID_COLUMNS = ("study_id", "id", "uid", "report_id", "filename", "path")
_TEXT_COLUMNS = ("report", "text", "report_text")
_TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")
# Largest report file / archive member read (a report is a few KB; this guards memory against a
# mislabelled or malicious member, which would otherwise be read whole)
MAX_REPORT_BYTES = 16 * 2**20
# byte-order marks, the UTF-32 ones before UTF-16 (FF FE 00 00 starts with FF FE)
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
# characters that are not text: controls other than tab and line breaks, and U+FFFD (undecodable)
_NON_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd]")
NON_TEXT_FRACTION = 0.3


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


def read_reports(path, *, text_column: str | None = None, id_column: str | None = None,
                 max_report_bytes: int = MAX_REPORT_BYTES, follow_links: bool = False,
                 allow_repeated_ids: bool = False) -> Reports:
    """Read reports from ``path``, by its kind:

    - ``.csv`` / ``.parquet``: the ``text_column`` if given (e.g. ``"radiology_report"``), else a
      ``findings`` and/or ``impression`` column, else a ``report`` (``text``, ``report_text``)
      column; ids from ``id_column`` if given, else ``study_id`` / ``id`` / ... Column names match exactly, else up to case and surrounding spaces; a named column
      that is not there raises ``ValueError`` listing the table's columns. A list-valued Parquet
      cell (a report stored as its sentences) is joined with line breaks;
    - a folder of ``.txt`` files (the MIMIC-CXR ``files/p10/p10000032/s5....txt`` tree); ids are
      the file stems (``s50414267``);
    - a folder of ``.xml`` files or a ``.tgz`` / ``.tar.gz`` / ``.tar`` of them (IU / OpenI).

    Text is UTF-8, or UTF-8/16/32 with a byte-order mark (a BOM'd file that does not decode raises
    ``ValueError`` naming it); NUL characters in a CSV become spaces; a CSV row with more or fewer
    cells than the header raises ``ValueError`` naming the file and line. Reports that are mostly
    control or undecodable characters are read but named in a warning.

    In a folder, entries that are not regular files (FIFOs, sockets, broken links) are skipped
    with a warning, and so are links that lead outside the folder (``/etc/passwd``), unless
    ``follow_links=True``; a folder holding both ``.txt`` and ``.xml`` reports is refused (say which
    kind is meant by pointing at a folder of one kind). A report file or archive member larger
    than ``max_report_bytes`` raises ``ValueError`` naming it.

    Ids follow one rule for every source (:mod:`medtrim_ext.utils.ids`): a report without an id
    (an empty cell, no id column) gets a generated ``"#<row>"`` that no given id equals, and an id
    given twice (two table rows, ``p10/.../s1.txt`` and ``p11/.../s1.txt``, two archive members)
    raises ``ValueError`` naming both places, unless ``allow_repeated_ids`` (a manifest lists each
    image of a study on its own row).
    """
    if not isinstance(max_report_bytes, int) or isinstance(max_report_bytes, bool) or max_report_bytes < 1:
        raise ValueError(f"max_report_bytes must be a positive int, got {max_report_bytes!r}")
    if not isinstance(follow_links, bool):
        raise ValueError(f"follow_links must be a bool, got {follow_links!r}")
    for arg, value in (("text_column", text_column), ("id_column", id_column)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ValueError(f"{arg} must be a column name (a non-empty str), got {value!r}")
    p = Path(path)
    if not p.exists():
        raise ValueError(f"reports path {str(p)!r} does not exist")
    name = p.name.lower()
    table = p.is_file() and name.endswith(_TABLE_SUFFIXES)
    if (text_column is not None or id_column is not None) and not table:
        # ignoring the named column would read something other than what was asked for
        arg = "text_column" if text_column is not None else "id_column"
        raise ValueError(f"{arg} applies to CSV/Parquet tables only; reports path {str(p)!r} is not one")
    if not isinstance(allow_repeated_ids, bool):
        raise ValueError(f"allow_repeated_ids must be a bool, got {allow_repeated_ids!r}")
    if p.is_dir():
        reports = _read_dir(p, max_report_bytes, follow_links)
    elif not p.is_file():
        raise ValueError(f"reports path {str(p)!r} is not a regular file or a folder (a FIFO, socket "
                         "or device would block or never end)")
    elif name.endswith((".tgz", ".tar.gz", ".tar")):
        reports = _read_iu_tar(p, max_report_bytes)
    elif name.endswith(".xml"):
        reports = _collect([_parse_iu(_read_bytes(p, max_report_bytes), str(p))], str(p), "iu-xml")
    elif name.endswith(_TABLE_SUFFIXES):
        reports = _read_table(p, text_column, id_column, allow_repeated_ids)
    elif name.endswith(".txt"):
        reports = _collect([(p.stem, _read_text(p, max_report_bytes), {"path": str(p)}, str(p))],
                           str(p), "text")
    else:
        raise ValueError(f"reports path {str(p)!r}: unknown kind (expected .csv, .parquet, "
                         ".tgz/.tar of IU XML, or a folder of .txt / .xml reports)")
    if not len(reports):
        raise ValueError(f"reports path {str(p)!r} contains no reports")
    return reports


def _regular_files(root: Path, pattern: str, follow_links: bool = False) -> list[Path]:
    """Regular files under ``root`` matching ``pattern``, sorted; other entries are skipped with
    a warning (reading a FIFO blocks forever), and so are links (to the file or to a folder above
    it) that lead outside ``root`` unless ``follow_links``: ``pw.txt -> /etc/passwd`` is no report."""
    files, skipped, outside = [], [], []
    real_root, inside = root.resolve(), {}
    for f in root.rglob(pattern):
        if not f.is_file():
            skipped.append(f)
            continue
        if not follow_links:
            if f.parent not in inside:  # one resolve per folder, not per file
                inside[f.parent] = f.parent.resolve().is_relative_to(real_root)
            if not inside[f.parent] or (f.is_symlink() and not f.resolve().is_relative_to(real_root)):
                outside.append(f)
                continue
        files.append(f)
    odd = [f for f in skipped if not f.is_dir()]  # a folder named "x.txt" is just a folder
    if odd:
        warnings.warn(f"reports folder {str(root)!r}: skipped {len(odd)} {pattern} entr"
                      f"{'y' if len(odd) == 1 else 'ies'} that are not regular files "
                      f"(FIFOs, sockets, broken links), e.g. {[str(f) for f in odd[:3]]}", stacklevel=4)
    if outside:
        warnings.warn(f"reports folder {str(root)!r}: skipped {len(outside)} {pattern} entr"
                      f"{'y' if len(outside) == 1 else 'ies'} reached through links that lead outside it "
                      f"(follow_links=True reads them), e.g. {[str(f) for f in sorted(outside)[:3]]}",
                      stacklevel=4)
    return sorted(files)


def _read_dir(root: Path, max_bytes: int, follow_links: bool = False) -> Reports:
    xml, txt = _regular_files(root, "*.xml", follow_links), _regular_files(root, "*.txt", follow_links)
    if xml and txt:
        raise ValueError(f"reports folder {str(root)!r} holds both IU/OpenI .xml reports ({len(xml)}, "
                         f"e.g. {str(xml[0])!r}) and .txt reports ({len(txt)}, e.g. {str(txt[0])!r}); "
                         "which ones are meant is unclear: point at a folder of one kind")
    if xml:
        return _read_iu_dir(root, xml, max_bytes)
    return _read_text_tree(root, txt, max_bytes)


# -- tables --------------------------------------------------------------------------------------
def _read_table(p: Path, text_column: str | None = None, id_column: str | None = None,
                allow_repeated_ids: bool = False) -> Reports:
    if p.name.lower().endswith((".parquet", ".pq")):
        from ..utils.io import read_parquet_columns

        data = read_parquet_columns(p, what="table")
    else:
        import pandas as pd

        text = _read_csv_text(p)
        try:
            df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
        except Exception as exc:  # pandas raises many types (ParserError, UnicodeDecodeError ...)
            raise ValueError(f"cannot read table {str(p)!r}: {exc}") from None
        data = {c: df[c].tolist() for c in df.columns}
    n = len(next(iter(data.values()))) if data else 0
    cols = {str(c).strip().lower(): c for c in data}

    def named(column: str, arg: str):
        """The column the caller named: exactly, else up to case and surrounding spaces."""
        if column in data:
            return column
        if column.strip().lower() in cols:
            return cols[column.strip().lower()]
        raise ValueError(f"table {str(p)!r} has no column {column!r} ({arg}); its columns: {list(data)}")

    if text_column is not None:   # the named column alone, even where findings/impression exist
        findings = impression = None
        text_col = named(text_column, "text_column")
    else:
        findings, impression = cols.get("findings"), cols.get("impression")
        text_col = next((cols[c] for c in _TEXT_COLUMNS if c in cols), None)
    if findings is None and impression is None and text_col is None:
        raise ValueError(f"table {str(p)!r} needs a 'findings' and/or 'impression' column, or a "
                         f"'report' / 'text' column, or the text column named (text_column=, "
                         f"`medtrim extract --text-column NAME`); its columns: {list(data)}")
    id_col = (named(id_column, "id_column") if id_column is not None else
              next((cols[c] for c in _ID_COLUMNS if c in cols), None))

    def cell(k: int, col, lists: bool = True) -> str:
        """Row ``k`` of ``col`` as text: missing is "", a list of texts (a report stored as its
        sentences or lines) is joined with line breaks; anything else nested is refused."""
        v = data[col][k] if col is not None else None
        if v is None or (isinstance(v, float) and v != v):
            return ""
        if isinstance(v, str):
            return v
        if lists and isinstance(v, (list, tuple)) and all(x is None or isinstance(x, str) for x in v):
            return "\n".join(x for x in v if x)
        if isinstance(v, (list, tuple, dict, bytes, bytearray)):
            want = "a text or a list of texts" if lists else "a single value"
            raise ValueError(f"table {str(p)!r} column {col!r} row {k}: expected {want}, got "
                             f"{type(v).__name__} {str(v)[:60]!r}")
        return str(v)

    items = []
    for k in range(n):
        if findings is not None or impression is not None:
            parts = []
            if findings is not None and cell(k, findings).strip():
                parts.append(f"FINDINGS: {cell(k, findings)}")
            if impression is not None and cell(k, impression).strip():
                parts.append(f"IMPRESSION: {cell(k, impression)}")
            text = "\n".join(parts)
            if not text and text_col is not None:
                text = cell(k, text_col)
        else:
            text = cell(k, text_col)
        if id_col is not None:
            cell(k, id_col, lists=False)   # a list or bytes id is refused by name
        # the raw value: the id rule tells 1 from True and a gap from a given id
        items.append((data[id_col][k] if id_col is not None else None, text, {}, f"row {k}"))
    return _collect(items, str(p), "table", allow_repeated_ids)


def _read_csv_text(p: Path) -> str:
    """The CSV's text, decoded (BOMs honoured), NUL made a space, every row checked to have as
    many cells as the header: pandas' parser ends a cell at a NUL, and shifts or pads a ragged row
    silently, so that ids and texts become other cells."""
    import gzip

    try:
        with (gzip.open if p.name.lower().endswith(".gz") else open)(p, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise ValueError(f"cannot read table {str(p)!r}: {exc}") from None
    text = _decode(data, f"table {str(p)!r}", errors="strict").replace("\x00", " ")
    old_limit = csv.field_size_limit(2**31 - 1)  # a report cell may be larger than csv's 128 KiB
    try:
        reader, width, start = csv.reader(io.StringIO(text, newline="")), None, 1
        for row in reader:
            if row and not (len(row) == 1 and not row[0].strip()):  # blank lines: pandas skips them
                if width is None:
                    width = len(row)
                elif len(row) != width:
                    raise ValueError(f"table {str(p)!r} line {start}: {len(row)} cell{'s' * (len(row) != 1)} "
                                     f"where the header has {width}; a ragged row would shift or drop "
                                     "columns (quote cells that hold the delimiter)")
            start = reader.line_num + 1
    except csv.Error as exc:
        raise ValueError(f"cannot read table {str(p)!r} line {start}: {exc}") from None
    finally:
        csv.field_size_limit(old_limit)
    return text


def _decode(data: bytes, where: str, errors: str = "replace") -> str:
    """``data`` as text: by its byte-order mark, else UTF-8 (with ``errors``)."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(encoding, errors="replace" if encoding == "utf-8-sig" else "strict")
            except UnicodeDecodeError as exc:
                raise ValueError(f"{where} starts with a {encoding} byte-order mark but does not decode "
                                 f"as {encoding}: {exc}") from None
    try:
        return data.decode("utf-8", errors=errors)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{where} is not UTF-8 (and has no byte-order mark): {exc}") from None


# -- MIMIC-CXR tree ------------------------------------------------------------------------------
def _read_text_tree(root: Path, files: list[Path], max_bytes: int) -> Reports:
    items = []
    for f in files:
        meta = {"path": str(f.relative_to(root))}
        if f.parent.name.startswith("p") and f.parent.name[1:].isdigit():
            meta["subject_id"] = f.parent.name  # files/p10/p10000032/s50414267.txt
        items.append((f.stem, _read_text(f, max_bytes), meta, repr(meta["path"])))
    return _collect(items, str(root), "text-tree")


def _read_text(p: Path, max_bytes: int = MAX_REPORT_BYTES) -> str:
    text = _decode(_read_bytes(p, max_bytes), f"report {str(p)!r}")
    return text.replace("\r\n", "\n").replace("\r", "\n")  # universal newlines, as open() in text mode


def _read_bytes(p: Path, max_bytes: int = MAX_REPORT_BYTES) -> bytes:
    try:
        with open(p, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise ValueError(f"cannot read report {str(p)!r}: {exc}") from None
    if len(data) > max_bytes:
        raise ValueError(f"report {str(p)!r} is larger than max_report_bytes ({max_bytes:,} bytes); "
                         "is it a report?")
    return data


# -- IU / OpenI XML ------------------------------------------------------------------------------
def _read_iu_dir(root: Path, files: list[Path], max_bytes: int) -> Reports:
    items = [_parse_iu(_read_bytes(f, max_bytes), str(f)) for f in files]
    return _collect(items, str(root), "iu-xml")


def _read_iu_tar(p: Path, max_bytes: int) -> Reports:
    items = []
    try:
        with tarfile.open(p) as tar:
            members = sorted((m for m in tar.getmembers() if m.isfile() and m.name.endswith(".xml")),
                             key=lambda m: _natural_key(m.name))
            for m in members:
                if m.size > max_bytes:
                    raise ValueError(f"archive {str(p)!r}: member {m.name!r} has {m.size:,} bytes, more "
                                     f"than max_report_bytes ({max_bytes:,}); is it a report?")
                f = tar.extractfile(m)
                items.append(_parse_iu(f.read(max_bytes), f"{p}:{m.name}"))
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ValueError(f"cannot read archive {str(p)!r}: {exc}") from None
    return _collect(items, str(p), "iu-xml")


def _parse_iu(data: bytes, where: str):
    """(id, text with section headers, meta with MeSH tags, where) of one IU report."""
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
    return sid, "\n".join(parts), meta, repr(where)


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _collect(items, source: str, kind: str, allow_repeated_ids: bool = False) -> Reports:
    """Reports from ``(raw id, text, meta, place)`` items; the ids by the one id rule."""
    from ..utils.ids import resolve_ids

    raw, texts, metas, places = (list(x) for x in zip(*items)) if items else ([], [], [], [])
    ids, _ = resolve_ids(raw, places, f"reports {source!r}", allow_repeats=allow_repeated_ids)
    binary = [i for i, t in zip(ids, texts) if t and len(_NON_TEXT.findall(t)) > NON_TEXT_FRACTION * len(t)]
    if binary:
        warnings.warn(f"reports {source!r}: {len(binary)} report{'s are' if len(binary) > 1 else ' is'} mostly "
                      f"not text (over {NON_TEXT_FRACTION:.0%} control or undecodable characters), e.g. "
                      f"{binary[:3]}; a binary file, or text in another encoding?", stacklevel=3)
    return Reports(ids=ids, texts=texts, source=source, kind=kind, meta=metas)
