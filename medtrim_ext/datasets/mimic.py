"""MimicCxrDataset: the MIMIC-CXR-JPG layout, one frontal image per study.

Layout (PhysioNet ``mimic-cxr-jpg/2.x``)::

    root/mimic-cxr-2.0.0-split.csv(.gz)        dicom_id, study_id, subject_id, split
    root/mimic-cxr-2.0.0-metadata.csv(.gz)     optional: dicom_id, ViewPosition, ...
    root/mimic-cxr-2.0.0-chexpert.csv(.gz)     optional: subject_id, study_id, 14 label columns
    root/files/p10/p10000032/s50414267/<dicom_id>.jpg
    reports_root/files/p10/p10000032/s50414267.txt   (reports_root defaults to root)
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .base import (ReportImageDataset, labels_tensor, load_image, normalize_split,
                   resolve_records, warn_skipped)

FRONTAL_VIEWS = ("PA", "AP")


def _find_table(root: Path, stem: str, required: bool):
    for suffix in (".csv.gz", ".csv"):
        p = root / f"{stem}{suffix}"
        if p.is_file():
            return p
    if required:
        raise ValueError(f"MIMIC-CXR root {str(root)!r} has no {stem}.csv(.gz)")
    return None


def _read_table(path: Path, required_columns):
    import pandas as pd

    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise ValueError(f"cannot read {str(path)!r}: {exc}") from None
    missing = [c for c in required_columns if c not in df.columns]
    if missing:
        raise ValueError(f"{str(path)!r} lacks column(s) {missing}; it has {list(df.columns)}")
    return df


class MimicCxrDataset(ReportImageDataset):
    """One image per study of a MIMIC-CXR-JPG split, with its report.

    The image is the first frontal (ViewPosition PA or AP) image of the study in the split
    file's order when the metadata table is present, else the study's first image. Studies
    without a frontal image, without a report file or whose image file is missing are skipped
    (with a warning that counts them). ``labels`` come from the CheXpert table when present
    (1 / 0; -1 "uncertain" and blank -> NaN). Study ids are ``"s<study_id>"``, as in the
    report file names. ``texts`` hold the FINDINGS / IMPRESSION text (``sections=True``).
    ``limit``: use only the first ``limit`` studies of the split (quick runs); ``n_process``:
    extraction worker processes for the reports that are not cached yet.
    """

    kind = "mimic"

    def __init__(self, root, split: str = "train", *, reports_root=None, image_size: int = 224,
                 in_chans: int = 1, train: bool = False, normalize: str = "half",
                 transform: Callable | None = None,
                 entities: str = "extracted", cache_dir=None, progress: bool = True,
                 sections: bool = True, aug_seed: int | None = None, extractor=None,
                 n_process: int = 1, limit: int | None = None):
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"MIMIC-CXR root {str(root)!r} is not a folder")
        files = root / "files"
        if not files.is_dir():
            raise ValueError(f"MIMIC-CXR root {str(root)!r} has no 'files' folder of images")
        rroot = Path(reports_root) if reports_root is not None else root
        rfiles = rroot / "files" if (rroot / "files").is_dir() else rroot
        if not rfiles.is_dir():
            raise ValueError(f"MIMIC-CXR reports folder {str(rroot)!r} does not exist")
        self.split = normalize_split(split)
        self.root = root

        split_path = _find_table(root, "mimic-cxr-2.0.0-split", required=True)
        df = _read_table(split_path, ("dicom_id", "study_id", "subject_id", "split"))
        df = df[[normalize_split(s, f"{split_path} split") == self.split for s in df["split"]]]
        meta_path = _find_table(root, "mimic-cxr-2.0.0-metadata", required=False)
        views = None
        if meta_path is not None:
            meta = _read_table(meta_path, ("dicom_id", "ViewPosition"))
            views = dict(zip(meta["dicom_id"], meta["ViewPosition"].str.strip().str.upper()))

        # first (frontal) image per study, in the split file's order
        chosen: dict[str, tuple[str, str]] = {}
        for dicom, study, subject in zip(df["dicom_id"], df["study_id"], df["subject_id"]):
            if study in chosen:
                continue
            if views is not None and views.get(dicom) not in FRONTAL_VIEWS:
                continue
            chosen[study] = (dicom, subject)
        if limit is not None:
            chosen = dict(list(chosen.items())[:int(limit)])

        from tqdm import tqdm

        paths, reports, ids, subjects = [], [], [], []
        no_report, no_image = [], []
        for study, (dicom, subject) in tqdm(chosen.items(), desc=f"mimic {self.split}", unit="study",
                                             disable=not progress):
            sub = f"p{subject[:2]}/p{subject}"
            report_path = rfiles / sub / f"s{study}.txt"
            image_path = files / sub / f"s{study}" / f"{dicom}.jpg"
            if not image_path.is_file():
                no_image.append(str(image_path))
                continue
            try:
                text = report_path.read_text(encoding="utf-8", errors="replace")
            except FileNotFoundError:
                no_report.append(str(report_path))
                continue
            except OSError as exc:
                raise ValueError(f"cannot read report {str(report_path)!r}: {exc}") from None
            paths.append(image_path)
            reports.append(text)
            ids.append(f"s{study}")
            subjects.append(subject)
        where = f"MIMIC-CXR {self.split}"
        warn_skipped("studies without an image file", no_image, where)
        warn_skipped("studies without a report file", no_report, where)
        if not paths:
            raise ValueError(f"{where}: no study under {str(root)!r} has both a frontal image and a report")
        self.image_paths = paths
        self.subject_ids = subjects

        labels, names = None, []
        chex_path = _find_table(root, "mimic-cxr-2.0.0-chexpert", required=False)
        if chex_path is not None:
            chex = _read_table(chex_path, ("subject_id", "study_id"))
            names = [c for c in chex.columns if c not in ("subject_id", "study_id")]
            by_study = {s: row for s, row in zip(chex["study_id"], chex[names].itertuples(index=False))}
            rows = [list(by_study.get(i[1:], [""] * len(names))) for i in ids]
            labels = labels_tensor(rows, str(chex_path))

        records = resolve_records(entities, ids, reports, cache_dir=cache_dir, progress=progress,
                                  extractor=extractor, n_process=n_process, where=where)
        self._setup(reports=reports, study_ids=ids, records=records, transform=transform,
                    image_size=image_size, in_chans=in_chans, train=train, sections=sections,
                    labels=labels, label_names=names, seed=aug_seed, normalize=normalize)

    def load_image(self, i: int):
        return load_image(self.image_paths[i], getattr(self.transform, "image_size", None))
