"""ManifestDataset: image / report pairs listed in a CSV or Parquet table.

:func:`index_manifest` reads the table into a :class:`ManifestIndex` (rows of the split, image
paths, reports, labels); :func:`read_ground_truth` reads an ``attributes.jsonl``;
:class:`ManifestDataset` adds the entity records and the image transform.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..utils.ids import id_text, item_id, resolve_ids
from ..utils.io import read_parquet_columns
from .base import (DEFAULT_SPLIT_FRACTIONS, ReportImageDataset, check_split_fractions, hash_split,
                   labels_tensor, load_image, normalize_split, resolve_records)

IMAGE_COLUMNS = ("image_path", "image", "path", "filename", "file")
ID_COLUMNS = ("study_id", "id", "uid")
PATIENT_COLUMNS = ("patient_id", "subject_id", "patient")


def _cell(v) -> str:
    """A table cell as stripped text; blank for None and NaN (Parquet's missing values)."""
    return "" if v is None or (isinstance(v, float) and v != v) else str(v).strip()


@dataclass
class ManifestIndex:
    """The rows of one split of a manifest: image paths, report texts and study ids in row
    order, ``labels`` (or None) and where the split came from (``split_source``: ``"column"``
    or ``"hash"``, of patient / study ids by ``split_fractions``)."""

    split: str | None
    split_source: str
    split_fractions: tuple | None
    image_paths: list[Path]
    texts: list[str]
    study_ids: list[str]
    labels: torch.Tensor | None
    label_names: list[str]


def _read_table(path: Path):
    """The manifest as a DataFrame of text cells, checked to be a readable table with rows."""
    import pandas as pd

    if not path.is_file():
        raise ValueError(f"manifest {str(path)!r} does not exist or is not a file")
    if not path.name.lower().endswith((".csv", ".csv.gz", ".parquet", ".pq")):
        raise ValueError(f"manifest {str(path)!r} must be a .csv or .parquet file")
    if path.name.lower().endswith((".parquet", ".pq")):
        # not pd.read_parquet: it can abort the interpreter at exit (see read_parquet_columns)
        df = pd.DataFrame(read_parquet_columns(path, what="manifest"))
    else:
        try:
            df = pd.read_csv(path, dtype=str, keep_default_na=False)
        except Exception as exc:  # pandas raises many types
            raise ValueError(f"cannot read manifest {str(path)!r}: {exc}") from None
    if len(df) == 0:
        raise ValueError(f"manifest {str(path)!r} has no rows")
    return df


class _Columns:
    """Case-insensitive column lookup of a manifest table."""

    def __init__(self, df, path: Path):
        self.df, self.path = df, path
        self.names = {str(c).strip().lower(): c for c in df.columns}

    def named(self, name: str):
        """The column called ``name``; a ValueError names the manifest when there is none."""
        if name.strip().lower() not in self.names:
            raise ValueError(f"manifest {str(self.path)!r} has no column {name!r}; it has "
                             f"{list(self.df.columns)}")
        return self.names[name.strip().lower()]

    def first(self, candidates):
        """The first of ``candidates`` that the table has, or None."""
        return next((self.names[c] for c in candidates if c in self.names), None)


def _split_rows(cols: _Columns, ids: list[str], split, split_fractions):
    """(rows of ``split``, its name, split source, fractions); all rows when ``split`` is None."""
    path, df = cols.path, cols.df
    split_col = cols.names.get("split")
    if split_fractions is not None:
        if split_col is not None:
            raise ValueError(f"manifest {str(path)!r} has a split column, which decides the splits: "
                             "split_fractions applies only to a manifest without one")
        split_fractions = check_split_fractions(split_fractions)
    source = "column" if split_col is not None else "hash"
    fractions = None if split_col is not None else (split_fractions or DEFAULT_SPLIT_FRACTIONS)
    rows = list(range(len(df)))
    if split is None:
        return rows, None, source, fractions
    split = normalize_split(split)
    if split_col is not None:
        values = [normalize_split(v, f"manifest {str(path)!r} row {k} split")
                  for k, v in enumerate(df[split_col])]
    else:
        patient_col = cols.first(PATIENT_COLUMNS)
        patients = [_cell(v) for v in df[patient_col]] if patient_col is not None else [""] * len(df)
        values = [hash_split(patients[k] or ids[k], fractions) for k in rows]
    rows = [k for k in rows if values[k] == split]
    if not rows:
        how = ("" if split_col is not None else
               f" (no split column: rows are split by a hash of their patient / study id with "
               f"split_fractions {list(fractions)}; add a split column or change "
               "data.options.split_fractions)")
        raise ValueError(f"manifest {str(path)!r} has no rows with split {split!r}{how}")
    return rows, split, source, fractions


def _image_paths(df, img_col, rows: list[int], path: Path) -> list[Path]:
    """The image files of the rows (relative to the manifest's folder unless absolute), all
    checked to exist up front."""
    paths, missing = [], []
    for k in rows:
        cell = df[img_col].iloc[k]
        if cell is None or not str(cell).strip():
            raise ValueError(f"manifest {str(path)!r} row {k}: empty {img_col!r}")
        p = Path(str(cell))
        p = p if p.is_absolute() else path.parent / p
        if not p.is_file():
            missing.append(str(p))
        paths.append(p)
    if missing:
        raise ValueError(f"manifest {str(path)!r}: {len(missing)} image file(s) do not exist, "
                         f"e.g. {missing[:3]}")
    return paths


def index_manifest(path, split: str | None = None, *, image_column: str | None = None,
                   label_columns: Sequence[str] | None = None,
                   split_fractions: Sequence[float] | None = None) -> ManifestIndex:
    """The rows of ``split`` of a manifest (see :class:`ManifestDataset` for the columns and
    the splits); every error is a ValueError naming the manifest."""
    from ..extraction.readers import read_reports

    path = Path(path)
    df = _read_table(path)
    cols = _Columns(df, path)
    img_col = cols.named(image_column) if image_column else cols.first(IMAGE_COLUMNS)
    if img_col is None:
        raise ValueError(f"manifest {str(path)!r} needs an image column ({' / '.join(IMAGE_COLUMNS)}); "
                         f"it has {list(df.columns)}")
    reports = read_reports(path, allow_repeated_ids=True)  # texts, with findings / impression joined like the extractor expects
    id_col = cols.first(ID_COLUMNS)
    # the one id rule (utils/ids.py); repeats are several images of one study
    ids, _ = resolve_ids(list(df[id_col]) if id_col is not None else [None] * len(df),
                         [f"row {k}" for k in range(len(df))], f"manifest {str(path)!r}",
                         allow_repeats=True)
    rows, split, source, fractions = _split_rows(cols, ids, split, split_fractions)
    image_paths = _image_paths(df, img_col, rows, path)
    labels, names = None, ()
    if label_columns:
        names = [cols.named(c) for c in label_columns]
        labels = labels_tensor([[df[c].iloc[k] for c in names] for k in rows], f"manifest {str(path)!r}")
    return ManifestIndex(split, source, fractions, image_paths, [reports.texts[k] for k in rows],
                         [ids[k] for k in rows], labels, [str(c) for c in names])


def read_ground_truth(attributes, manifest: Path, study_ids: Sequence[str]):
    """(attributes, records) of the studies from a JSON-lines ground truth, or (None, None).

    ``attributes``: the file, ``None`` (none) or ``"auto"`` (``attributes.jsonl`` beside the
    ``manifest``, when present)."""
    if attributes is None:
        return None, None
    if attributes == "auto":
        p = Path(manifest).parent / "attributes.jsonl"
        if not p.is_file():
            return None, None
    else:
        p = Path(attributes)
        if not p.is_file():
            raise ValueError(f"attributes file {str(p)!r} does not exist")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read attributes file {str(p)!r}: {exc}") from None
    by_id, line_of = {}, {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            sid = id_text(item_id(item, f"{p}:{lineno}"), f"{p}:{lineno}")
            if sid is None:
                raise KeyError("study_id")
            value = (item["attributes"], item["records"])
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise ValueError(f"{p}:{lineno}: expected a JSON object with study_id, attributes "
                             f"and records ({exc})") from None
        if sid in by_id:   # one study, two truths: which one was rendered is unknown
            raise ValueError(f"attributes file {str(p)!r}: study id {sid!r} is given twice, at line "
                             f"{line_of[sid]} and at line {lineno}")
        by_id[sid], line_of[sid] = value, lineno
    absent = [s for s in study_ids if s not in by_id]
    if absent:
        raise ValueError(f"attributes file {str(p)!r} lacks {len(absent)} study id(s) of the "
                         f"manifest, e.g. {absent[:3]}")
    return [by_id[s][0] for s in study_ids], [by_id[s][1] for s in study_ids]


class ManifestDataset(ReportImageDataset):
    """Rows of a table with an image path and a report.

    Columns (case-insensitive): the image path (``image_path``; also ``image``, ``path``,
    ``filename``, ``file``), relative to the manifest's folder or absolute; the report
    (``report``, ``text``, ``report_text``, or ``findings`` and/or ``impression``, read by
    :func:`medtrim_ext.extraction.read_reports`); optional ``study_id`` (also ``id``, ``uid``;
    missing: ``"#<row>"``; repeated: one study with several images, see
    :mod:`medtrim_ext.utils.ids`), ``patient_id`` (also ``subject_id``, ``patient``) and ``split``
    (train / validate / test; also val, valid, validation, dev, training, testing).

    Without a ``split`` column, ``split`` selects the rows whose patient id (else study id, for
    rows without one) hashes into that split (:func:`~.base.hash_split`) by ``split_fractions``
    (train, validate, test; default 0.8 / 0.1 / 0.1): deterministic, and every row of a patient
    or study lands in the same split, so none leaks from training into evaluation. The shares
    are of patients, not rows, and only close to the fractions for small sets.
    ``split_fractions`` with a ``split`` column is an error (the column decides).

    ``label_columns``: columns holding 1 / 0 / -1 / blank labels (-> ``labels`` with NaN for
    -1 and blank). ``attributes``: a JSON-lines file of ``{"study_id", "attributes",
    "records"}`` (default: ``attributes.jsonl`` beside the manifest, when present, as written
    by :func:`~medtrim_ext.datasets.write_phantom_dataset`); it provides ``attributes`` and the
    records of ``entities="ground_truth"``.

    Every listed image must exist (checked up front: ``ValueError`` naming the missing files).
    """

    kind = "manifest"

    def __init__(self, path, split: str | None = None, *, image_size: int = 224,
                 in_chans: int = 1, train: bool = False, normalize: str = "half",
                 transform: Callable | None = None,
                 entities: str = "extracted", cache_dir=None, progress: bool = True,
                 sections: bool = True, aug_seed: int | None = None, extractor=None,
                 image_column: str | None = None, label_columns: Sequence[str] | None = None,
                 attributes="auto", split_fractions: Sequence[float] | None = None):
        index = index_manifest(path, split, image_column=image_column, label_columns=label_columns,
                               split_fractions=split_fractions)
        self.path = Path(path)
        self.split = index.split
        #: where the splits come from: "column", or "hash" (of patient / study ids, by fractions)
        self.split_source, self.split_fractions = index.split_source, index.split_fractions
        self.image_paths = index.image_paths
        attrs, truth = read_ground_truth(attributes, self.path, index.study_ids)
        records = resolve_records(entities, index.study_ids, index.texts, ground_truth=truth,
                                  cache_dir=cache_dir, progress=progress, extractor=extractor,
                                  where=f"manifest {str(self.path)!r}")
        self._setup(reports=index.texts, study_ids=index.study_ids, records=records,
                    transform=transform, image_size=image_size, in_chans=in_chans, train=train,
                    sections=sections, attributes=attrs, labels=index.labels,
                    label_names=index.label_names, seed=aug_seed, normalize=normalize)

    def load_image(self, i: int):
        return load_image(self.image_paths[i], getattr(self.transform, "image_size", None))
