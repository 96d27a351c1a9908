"""MimicCxrDataset: the MIMIC-CXR-JPG layout, one frontal image per study.

Layout (PhysioNet ``mimic-cxr-jpg/2.x``)::

    root/mimic-cxr-2.0.0-split.csv(.gz)        dicom_id, study_id, subject_id, split
    root/mimic-cxr-2.0.0-metadata.csv(.gz)     optional: dicom_id, ViewPosition, ...
    root/mimic-cxr-2.0.0-chexpert.csv(.gz)     optional: subject_id, study_id, 14 label columns
    root/files/p10/p10000032/s50414267/<dicom_id>.jpg
    reports_root/files/p10/p10000032/s50414267.txt   (reports_root defaults to root)

:func:`index_mimic` reads the tables and files into a :class:`MimicIndex`;
:class:`MimicCxrDataset` adds the entity records and the image transform.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .base import (ReportImageDataset, labels_tensor, load_image, normalize_split,
                   resolve_records, warn_skipped)

FRONTAL_VIEWS = ("PA", "AP")


@dataclass
class MimicIndex:
    """The usable studies of one split, as parallel lists: the chosen image, the report text,
    ``"s<study_id>"`` and the subject id; ``labels`` from the CheXpert table (or None)."""

    split: str
    image_paths: list[Path]
    reports: list[str]
    study_ids: list[str]
    subject_ids: list[str]
    labels: torch.Tensor | None = None
    label_names: list[str] = field(default_factory=list)


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
    except Exception as exc:  # pandas raises many types
        raise ValueError(f"cannot read {str(path)!r}: {exc}") from None
    missing = [c for c in required_columns if c not in df.columns]
    if missing:
        raise ValueError(f"{str(path)!r} lacks column(s) {missing}; it has {list(df.columns)}")
    return df


def _folders(root: Path, reports_root) -> tuple[Path, Path]:
    """The image and report ``files`` folders, checked."""
    if not root.is_dir():
        raise ValueError(f"MIMIC-CXR root {str(root)!r} is not a folder")
    files = root / "files"
    if not files.is_dir():
        raise ValueError(f"MIMIC-CXR root {str(root)!r} has no 'files' folder of images")
    rroot = Path(reports_root) if reports_root is not None else root
    rfiles = rroot / "files" if (rroot / "files").is_dir() else rroot
    if not rfiles.is_dir():
        raise ValueError(f"MIMIC-CXR reports folder {str(rroot)!r} does not exist")
    return files, rfiles


def _first_frontal(root: Path, split: str) -> dict[str, tuple[str, str]]:
    """study id -> (dicom id, subject id) of the study's first frontal image in the split file's
    order (its first image at all without a metadata table)."""
    split_path = _find_table(root, "mimic-cxr-2.0.0-split", required=True)
    df = _read_table(split_path, ("dicom_id", "study_id", "subject_id", "split"))
    df = df[[normalize_split(s, f"{split_path} split") == split for s in df["split"]]]
    meta_path = _find_table(root, "mimic-cxr-2.0.0-metadata", required=False)
    views = None
    if meta_path is not None:
        meta = _read_table(meta_path, ("dicom_id", "ViewPosition"))
        views = dict(zip(meta["dicom_id"], meta["ViewPosition"].str.strip().str.upper()))
    chosen: dict[str, tuple[str, str]] = {}
    for dicom, study, subject in zip(df["dicom_id"], df["study_id"], df["subject_id"]):
        if study in chosen:
            continue
        if views is not None and views.get(dicom) not in FRONTAL_VIEWS:
            continue
        chosen[study] = (dicom, subject)
    return chosen


def _read_report(path: Path):
    """The report text, or None when the file does not exist."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"cannot read report {str(path)!r}: {exc}") from None


def _collect(chosen: dict, files: Path, rfiles: Path, split: str, progress: bool,
             follow_links: bool = False) -> MimicIndex:
    """The chosen studies that have an image file and a report file; warns about the others.
    A report file reached through a link that leads outside ``rfiles`` (``s5....txt ->
    /etc/passwd``) is skipped unless ``follow_links``."""
    from tqdm import tqdm

    out = MimicIndex(split, [], [], [], [])
    no_report, no_image, outside = [], [], []
    real_rfiles, inside = rfiles.resolve(), {}
    for study, (dicom, subject) in tqdm(chosen.items(), desc=f"mimic {split}", unit="study",
                                         disable=not progress):
        sub = f"p{subject[:2]}/p{subject}"
        report_path = rfiles / sub / f"s{study}.txt"
        image_path = files / sub / f"s{study}" / f"{dicom}.jpg"
        if not image_path.is_file():
            no_image.append(str(image_path))
            continue
        if not follow_links and report_path.parent.is_dir():
            if report_path.parent not in inside:  # one resolve per folder, not per study
                inside[report_path.parent] = report_path.parent.resolve().is_relative_to(real_rfiles)
            if not inside[report_path.parent] or (report_path.is_symlink() and
                                                  not report_path.resolve().is_relative_to(real_rfiles)):
                outside.append(str(report_path))
                continue
        text = _read_report(report_path)
        if text is None:
            no_report.append(str(report_path))
            continue
        out.image_paths.append(image_path)
        out.reports.append(text)
        out.study_ids.append(f"s{study}")
        out.subject_ids.append(subject)
    warn_skipped("studies without an image file", no_image, f"MIMIC-CXR {split}")
    warn_skipped("studies without a report file", no_report, f"MIMIC-CXR {split}")
    warn_skipped("studies whose report file is a link that leads outside the reports folder "
                 "(follow_links=True reads them)", outside, f"MIMIC-CXR {split}")
    return out


def _chexpert_labels(root: Path, study_ids: list[str]):
    """(labels, names) of the studies from the CheXpert table, or (None, []) without one."""
    chex_path = _find_table(root, "mimic-cxr-2.0.0-chexpert", required=False)
    if chex_path is None:
        return None, []
    chex = _read_table(chex_path, ("subject_id", "study_id"))
    names = [c for c in chex.columns if c not in ("subject_id", "study_id")]
    by_study = {s: row for s, row in zip(chex["study_id"], chex[names].itertuples(index=False))}
    rows = [list(by_study.get(i[1:], [""] * len(names))) for i in study_ids]
    return labels_tensor(rows, str(chex_path)), names


def index_mimic(root, split: str = "train", *, reports_root=None, limit: int | None = None,
                progress: bool = True, follow_links: bool = False) -> MimicIndex:
    """The studies of one split of a MIMIC-CXR-JPG tree (see :class:`MimicCxrDataset`).

    Studies without a frontal image, a report file or an image file are skipped with a warning
    that counts them; a bad layout, an unreadable table or no usable study raises
    ``ValueError`` naming the folder or file. Report files reached through links that lead
    outside the reports folder are skipped with a warning, unless ``follow_links=True``."""
    if not isinstance(follow_links, bool):
        raise ValueError(f"follow_links must be a bool, got {follow_links!r}")
    root = Path(root)
    files, rfiles = _folders(root, reports_root)
    split = normalize_split(split)
    chosen = _first_frontal(root, split)
    if limit is not None:
        chosen = dict(list(chosen.items())[:int(limit)])
    out = _collect(chosen, files, rfiles, split, progress, follow_links)
    if not out.image_paths:
        raise ValueError(f"MIMIC-CXR {split}: no study under {str(root)!r} has both a frontal image "
                         "and a report")
    out.labels, out.label_names = _chexpert_labels(root, out.study_ids)
    return out


class MimicCxrDataset(ReportImageDataset):
    """One image per study of a MIMIC-CXR-JPG split, with its report.

    The image is the first frontal (ViewPosition PA or AP) image of the study in the split
    file's order when the metadata table is present, else the study's first image. Studies
    without a frontal image, without a report file or whose image file is missing are skipped
    (with a warning that counts them). ``labels`` come from the CheXpert table when present
    (1 / 0; -1 "uncertain" and blank -> NaN). Study ids are ``"s<study_id>"``, as in the
    report file names. ``texts`` hold the FINDINGS / IMPRESSION text (``sections=True``).
    ``limit``: use only the first ``limit`` studies of the split (quick runs); ``n_process``:
    extraction worker processes for the reports that are not cached yet; ``follow_links``: read
    report files that are links leading outside the reports folder (skipped with a warning
    by default).
    """

    kind = "mimic"

    def __init__(self, root, split: str = "train", *, reports_root=None, image_size: int = 224,
                 in_chans: int = 1, train: bool = False, normalize: str = "half",
                 transform: Callable | None = None,
                 entities: str = "extracted", cache_dir=None, progress: bool = True,
                 sections: bool = True, aug_seed: int | None = None, extractor=None,
                 n_process: int = 1, limit: int | None = None, follow_links: bool = False):
        index = index_mimic(root, split, reports_root=reports_root, limit=limit, progress=progress,
                            follow_links=follow_links)
        self.split, self.root = index.split, Path(root)
        self.image_paths, self.subject_ids = index.image_paths, index.subject_ids
        where = f"MIMIC-CXR {self.split}"
        records = resolve_records(entities, index.study_ids, index.reports, cache_dir=cache_dir,
                                  progress=progress, extractor=extractor, n_process=n_process,
                                  where=where)
        self._setup(reports=index.reports, study_ids=index.study_ids, records=records,
                    transform=transform, image_size=image_size, in_chans=in_chans, train=train,
                    sections=sections, labels=index.labels, label_names=index.label_names,
                    seed=aug_seed, normalize=normalize)

    def load_image(self, i: int):
        return load_image(self.image_paths[i], getattr(self.transform, "image_size", None))
