"""ManifestDataset: image / report pairs listed in a CSV or Parquet table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

from ..utils.io import read_parquet_columns
from .base import (DEFAULT_SPLIT_FRACTIONS, ReportImageDataset, check_split_fractions, hash_split,
                   labels_tensor, load_image, normalize_split, resolve_records)

IMAGE_COLUMNS = ("image_path", "image", "path", "filename", "file")
ID_COLUMNS = ("study_id", "id", "uid")
PATIENT_COLUMNS = ("patient_id", "subject_id", "patient")


def _cell(v) -> str:
    """A table cell as stripped text; blank for None and NaN (Parquet's missing values)."""
    return "" if v is None or (isinstance(v, float) and v != v) else str(v).strip()


class ManifestDataset(ReportImageDataset):
    """Rows of a table with an image path and a report.

    Columns (case-insensitive): the image path (``image_path``; also ``image``, ``path``,
    ``filename``, ``file``), relative to the manifest's folder or absolute; the report
    (``report``, ``text``, ``report_text``, or ``findings`` and/or ``impression``, read by
    :func:`medtrim_ext.extraction.read_reports`); optional ``study_id`` (also ``id``, ``uid``;
    default: the row number), ``patient_id`` (also ``subject_id``, ``patient``) and ``split``
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
        import pandas as pd

        from ..extraction.readers import read_reports

        path = Path(path)
        if not path.is_file():
            raise ValueError(f"manifest {str(path)!r} does not exist or is not a file")
        if not path.name.lower().endswith((".csv", ".csv.gz", ".parquet", ".pq")):
            raise ValueError(f"manifest {str(path)!r} must be a .csv or .parquet file")
        self.path = path
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
        cols = {str(c).strip().lower(): c for c in df.columns}

        def column(name: str) -> str:
            if name.strip().lower() not in cols:
                raise ValueError(f"manifest {str(path)!r} has no column {name!r}; it has {list(df.columns)}")
            return cols[name.strip().lower()]

        img_col = column(image_column) if image_column else next(
            (cols[c] for c in IMAGE_COLUMNS if c in cols), None)
        if img_col is None:
            raise ValueError(f"manifest {str(path)!r} needs an image column ({' / '.join(IMAGE_COLUMNS)}); "
                             f"it has {list(df.columns)}")
        reports = read_reports(path)  # texts, with findings / impression joined like the extractor expects
        id_col = next((cols[c] for c in ID_COLUMNS if c in cols), None)
        ids = [str(v) for v in df[id_col]] if id_col is not None else [str(k) for k in range(len(df))]
        rows = list(range(len(df)))
        split_col = cols.get("split")
        if split_fractions is not None:
            if split_col is not None:
                raise ValueError(f"manifest {str(path)!r} has a split column, which decides the splits: "
                                 "split_fractions applies only to a manifest without one")
            split_fractions = check_split_fractions(split_fractions)
        #: where the splits come from: "column", or "hash" (of patient / study ids, by fractions)
        self.split_source = "column" if split_col is not None else "hash"
        self.split_fractions = None if split_col is not None else (split_fractions or DEFAULT_SPLIT_FRACTIONS)
        if split is not None:
            self.split = normalize_split(split)
            if split_col is not None:
                values = [normalize_split(v, f"manifest {str(path)!r} row {k} split")
                          for k, v in enumerate(df[split_col])]
            else:
                patient_col = next((cols[c] for c in PATIENT_COLUMNS if c in cols), None)
                patients = ([_cell(v) for v in df[patient_col]] if patient_col is not None
                            else [""] * len(df))
                values = [hash_split(patients[k] or ids[k], self.split_fractions) for k in rows]
            rows = [k for k in rows if values[k] == self.split]
            if not rows:
                how = ("" if split_col is not None else
                       f" (no split column: rows are split by a hash of their patient / study id with "
                       f"split_fractions {list(self.split_fractions)}; add a split column or change "
                       "data.options.split_fractions)")
                raise ValueError(f"manifest {str(path)!r} has no rows with split {self.split!r}{how}")
        else:
            self.split = None

        self.image_paths = []
        missing = []
        for k in rows:
            cell = df[img_col].iloc[k]
            if cell is None or not str(cell).strip():
                raise ValueError(f"manifest {str(path)!r} row {k}: empty {img_col!r}")
            p = Path(str(cell))
            p = p if p.is_absolute() else path.parent / p
            if not p.is_file():
                missing.append(str(p))
            self.image_paths.append(p)
        if missing:
            raise ValueError(f"manifest {str(path)!r}: {len(missing)} image file(s) do not exist, "
                             f"e.g. {missing[:3]}")

        texts = [reports.texts[k] for k in rows]
        study_ids = [ids[k] for k in rows]

        labels, names = None, ()
        if label_columns:
            names = [column(c) for c in label_columns]
            labels = labels_tensor([[df[c].iloc[k] for c in names] for k in rows], f"manifest {str(path)!r}")

        attrs, truth = self._read_attributes(attributes, study_ids)
        records = resolve_records(entities, study_ids, texts, ground_truth=truth, cache_dir=cache_dir,
                                  progress=progress, extractor=extractor, where=f"manifest {str(path)!r}")
        self._setup(reports=texts, study_ids=study_ids, records=records, transform=transform,
                    image_size=image_size, in_chans=in_chans, train=train, sections=sections,
                    attributes=attrs, labels=labels, label_names=[str(c) for c in names], seed=aug_seed,
                    normalize=normalize)

    def _read_attributes(self, attributes, study_ids):
        """(attributes, records) from the JSON-lines ground truth, or (None, None)."""
        if attributes is None:
            return None, None
        if attributes == "auto":
            p = self.path.parent / "attributes.jsonl"
            if not p.is_file():
                return None, None
        else:
            p = Path(attributes)
            if not p.is_file():
                raise ValueError(f"attributes file {str(p)!r} does not exist")
        by_id = {}
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ValueError(f"cannot read attributes file {str(p)!r}: {exc}") from None
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                by_id[str(item["study_id"])] = (item["attributes"], item["records"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{p}:{lineno}: expected a JSON object with study_id, attributes "
                                 f"and records ({exc})") from None
        absent = [s for s in study_ids if s not in by_id]
        if absent:
            raise ValueError(f"attributes file {str(p)!r} lacks {len(absent)} study id(s) of the "
                             f"manifest, e.g. {absent[:3]}")
        return [by_id[s][0] for s in study_ids], [by_id[s][1] for s in study_ids]

    def load_image(self, i: int):
        return load_image(self.image_paths[i], getattr(self.transform, "image_size", None))
