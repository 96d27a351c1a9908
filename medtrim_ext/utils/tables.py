"""Result tables of ``medtrim mine`` and ``medtrim neighbors``, written in columns: Parquet or CSV.

A whole collection gives millions of rows (377k studies x K), too many for a Python loop per row.
Every row's ids come from the few hundred thousand distinct ids of the input and its scores from
a handful of score levels, so a column is given as indices into its distinct values: the ids are
escaped and quoted once per distinct id, the scores formatted once per distinct score, and the
rows are assembled by pyarrow's compute functions (``take``, ``binary_join_element_wise``).

Formats: a name ending in ``.parquet`` or ``.pq`` is Parquet (ids as strings, scores float32, an
empty cell null); anything else, and a stream (``-``, a pipe, ``/dev/stdout``), is CSV exactly as
``csv.writer`` writes it (``\\r\\n`` line ends, a cell quoted only when it holds ``,``, ``"``, or a
line break, id cells formula-escaped by :func:`~medtrim_ext.utils.io.escape_csv_cell`, scores
with 6 decimals, an empty cell empty). pyarrow comes with the ``extract`` and ``train`` extras; in
a core install CSV is written by the standard library (the same bytes, slower) and Parquet raises
:class:`~medtrim_ext.utils.extras.MissingExtraError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from .io import PARQUET_SUFFIXES, _FORMULA_STARTS, atomic_write, escape_csv_cell, is_stream_output

# rows per CSV piece or Parquet row group: the unit of the progress bar, and what is held as text
ROWS_PER_PIECE = 1 << 20


class IdColumn(NamedTuple):
    """A column of ids: row ``r`` holds ``texts[index[r]]``, empty where ``index[r] < 0``."""

    texts: Sequence[str]
    index: np.ndarray


def output_format(path) -> str:
    """``"parquet"`` for a file name ending in ``.parquet``/``.pq``, else ``"csv"`` (a stream
    has no name to go by: CSV)."""
    if not is_stream_output(path) and Path(str(path)).suffix.lower() in PARQUET_SUFFIXES:
        return "parquet"
    return "csv"


def check_format(path, what: str = "output") -> str:
    """:func:`output_format`, raising :class:`~medtrim_ext.utils.extras.MissingExtraError` (before
    any work) when Parquet is asked for without pyarrow."""
    fmt = output_format(path)
    if fmt == "parquet":
        from .extras import require_extra

        require_extra("extract", f"writing the Parquet {what} {str(path)!r}", ["pyarrow"])
    return fmt


def _have_pyarrow() -> bool:
    from .extras import missing_modules

    return not missing_modules(["pyarrow"])


def write_table(path, columns: dict, *, what: str = "output", progress: bool = False,
                desc: str = "writing", use_pyarrow: bool | None = None) -> str:
    """Write ``columns`` (name -> :class:`IdColumn`, a float array (NaN: empty) or an integer
    array, all of one length) to ``path`` atomically (:func:`~medtrim_ext.utils.io.atomic_write`),
    as :func:`output_format` says. ``use_pyarrow=False`` forces the standard-library CSV writer
    (the core install's). Returns the format written."""
    fmt = check_format(path, what)
    n = _length(columns)
    if use_pyarrow is None:
        use_pyarrow = _have_pyarrow()
    from .progress import progress_bar

    bar = progress_bar(enabled=progress, total=n, desc=desc, unit="row", leave=False)
    try:
        if fmt == "parquet":
            _write_parquet(path, columns, n, bar)
        else:
            pieces = _csv_pieces_arrow(columns, n) if use_pyarrow else _csv_pieces_python(columns, n)
            with atomic_write(path, "wb") as f:
                f.write((",".join(_csv_cell(name) for name in columns) + "\r\n").encode())
                for rows, data in pieces:
                    f.write(data)
                    bar.update(rows)
    finally:
        bar.close()
    return fmt


def _length(columns: dict) -> int:
    lengths = {name: len(c.index if isinstance(c, IdColumn) else c) for name, c in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"table columns differ in length: {lengths}")
    return next(iter(lengths.values()), 0)


def _pieces(n: int):
    return [slice(s, min(s + ROWS_PER_PIECE, n)) for s in range(0, n, ROWS_PER_PIECE)]


# -- CSV ---------------------------------------------------------------------------------------------
def _csv_cell(text: str) -> str:
    """One id cell as csv.writer writes it (QUOTE_MINIMAL), after formula escaping."""
    text = escape_csv_cell(text)
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _score_levels(values: np.ndarray):
    """(distinct finite values formatted as today's CSV, each row's index into them; NaN rows
    index one past the end, the empty cell)."""
    values = np.asarray(values)
    finite = ~np.isnan(values) if values.dtype.kind == "f" else np.ones(len(values), bool)
    levels, inverse = np.unique(values[finite], return_inverse=True)
    index = np.full(len(values), len(levels), dtype=np.int64)
    index[finite] = inverse.reshape(-1)
    # a float32 score printed as Python printed it: the float32 widened to a Python float
    return [f"{float(v):.6f}" for v in levels] + [""], index


def _int_levels(values: np.ndarray):
    levels, inverse = np.unique(np.asarray(values), return_inverse=True)
    return [str(int(v)) for v in levels], inverse.reshape(-1).astype(np.int64)


def _column_levels(column):
    """(distinct cell texts, row index into them) of one column; an empty cell is the last text."""
    if isinstance(column, IdColumn):
        index = np.asarray(column.index, dtype=np.int64)
        return None, np.where(index < 0, len(column.texts), index)   # texts escaped by the caller
    column = np.asarray(column)
    return _int_levels(column) if column.dtype.kind in "iu" else _score_levels(column)


def _csv_pieces_python(columns: dict, n: int):
    """(rows, bytes) pieces of the CSV body: the standard library's way (core install)."""
    texts, indices = [], []
    for column in columns.values():
        levels, index = _column_levels(column)
        if levels is None:
            levels = [_csv_cell(t) for t in column.texts] + [""]
        texts.append(levels)
        indices.append(index)
    for sl in _pieces(n):
        cols = [[level[i] for i in index[sl].tolist()] for level, index in zip(texts, indices)]
        data = "".join(",".join(row) + "\r\n" for row in zip(*cols))
        yield sl.stop - sl.start, data.encode()


def _csv_cells_arrow(texts: Sequence[str]):
    """The CSV cells of distinct id ``texts``, in pyarrow: formula escaping and quoting as
    :func:`_csv_cell` does, vectorised over the distinct ids."""
    import pyarrow as pa
    import pyarrow.compute as pc

    s = pa.large_string()
    arr = pa.array(list(texts), s)
    if len(arr) == 0:
        return arr
    formula = None
    for start in _FORMULA_STARTS:
        hit = pc.starts_with(arr, pattern=start)
        formula = hit if formula is None else pc.or_(formula, hit)
    arr = pc.if_else(formula, pc.binary_join_element_wise(pa.scalar("'", s), arr, pa.scalar("", s)), arr)
    quote = None
    for c in ',"\r\n':
        hit = pc.match_substring(arr, pattern=c)
        quote = hit if quote is None else pc.or_(quote, hit)
    quoted = pc.binary_join_element_wise(pa.scalar('"', s), pc.replace_substring(arr, '"', '""'),
                                         pa.scalar('"', s), pa.scalar("", s))
    return pc.if_else(quote, quoted, arr)


def _csv_pieces_arrow(columns: dict, n: int):
    """(rows, bytes) pieces of the CSV body, assembled by pyarrow from the distinct cells."""
    import pyarrow as pa
    import pyarrow.compute as pc

    s = pa.large_string()
    texts, indices, done = [], [], {}
    for column in columns.values():
        if isinstance(column, IdColumn):
            key = id(column.texts)   # mine's anchor, positive and negative ids share one list
            if key not in done:
                done[key] = pa.concat_arrays([_csv_cells_arrow(column.texts), pa.array([""], s)])
            cells = done[key]
            _, index = _column_levels(column)
        else:
            values = np.asarray(column)
            if values.dtype.kind in "iu":   # ranks: no levels to share, cast them all
                texts.append(None)
                indices.append(values)
                continue
            # a few score levels: hashed (O(N)), not sorted, and each formatted once
            encoded = pa.array(values, mask=np.isnan(values)).dictionary_encode()
            levels = encoded.dictionary.to_numpy(zero_copy_only=False)
            cells = pa.array([f"{float(v):.6f}" for v in levels] + [""], s)
            index = pc.fill_null(encoded.indices, len(levels)).to_numpy(zero_copy_only=False)
        texts.append(cells)
        indices.append(index)
    comma, end, nothing = pa.scalar(",", s), pa.scalar("\r\n", s), pa.scalar("", s)
    for sl in _pieces(n):
        cells = [pc.cast(pa.array(index[sl]), s) if level is None else pc.take(level, pa.array(index[sl]))
                 for level, index in zip(texts, indices)]
        lines = pc.binary_join_element_wise(pc.binary_join_element_wise(*cells, comma), end, nothing)
        # the rows' text is one contiguous buffer: write it as it lies
        offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)[lines.offset:lines.offset + len(lines) + 1]
        data = lines.buffers()[2]
        yield len(lines), memoryview(data)[int(offsets[0]):int(offsets[-1])]


# -- Parquet -----------------------------------------------------------------------------------------
def _arrow_column(column, sl):
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, _ArrowIds):
        index = np.asarray(column.index[sl], dtype=np.int64)
        return pc.take(column.arrow, pa.array(index, mask=index < 0))
    values = np.asarray(column[sl])
    return pa.array(values, mask=np.isnan(values) if values.dtype.kind == "f" else None)


def _write_parquet(path, columns: dict, n: int, bar) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    prepared, done = {}, {}
    for name, column in columns.items():
        if isinstance(column, IdColumn):   # the ids once, as an Arrow array to take from
            key = id(column.texts)   # mine's anchor, positive and negative ids share one list
            if key not in done:
                done[key] = pa.array(list(column.texts), pa.string())
            column = _ArrowIds(column.index, done[key])
        prepared[name] = column
    schema = pa.schema([(name, _arrow_column(c, slice(0, 0)).type) for name, c in prepared.items()])
    with atomic_write(path, "wb") as f:
        with pq.ParquetWriter(f, schema) as writer:
            for sl in _pieces(n) or [slice(0, 0)]:
                writer.write_table(pa.table({name: _arrow_column(c, sl) for name, c in prepared.items()},
                                            schema=schema))
                bar.update(sl.stop - sl.start)


class _ArrowIds(NamedTuple):
    """An id column for Parquet: row indices (-1: empty) into the ids as one Arrow array."""
    index: np.ndarray
    arrow: object


__all__ = ["IdColumn", "ROWS_PER_PIECE", "check_format", "output_format", "write_table"]
