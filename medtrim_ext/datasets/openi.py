"""OpenIDataset: the Indiana University chest X-ray collection (IU / OpenI).

Layout: the report XML collection (a folder such as ``ecgen-radiology/`` or the
``NLMCXR_reports.tgz`` archive), read by :func:`medtrim_ext.extraction.read_reports`, and a
folder of PNG images (``NLMCXR_png/``) named ``CXR<n>_<...>.png`` after the report id
``CXR<n>``. Only reports with at least one image and a non-empty text are used; the split is a
deterministic hash of the report id (80 / 10 / 10).

:func:`index_openi` pairs reports with images into an :class:`OpenIIndex`;
:class:`OpenIDataset` adds the entity records and the image transform.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .base import (ReportImageDataset, hash_split, load_image, normalize_split, resolve_records,
                   warn_skipped)

SPLIT_SHARES = (0.8, 0.1, 0.1)   # train / validate / test shares of the report-id hash split
_REPORT_NAMES = ("ecgen-radiology", "NLMCXR_reports.tgz", "NLMCXR_reports.tar.gz", "reports")
_IMAGE_NAMES = ("NLMCXR_png", "images", "png")


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _find(root: Path, names, what: str, given) -> Path:
    if given is not None:
        p = Path(given)
        if not p.exists():
            raise ValueError(f"IU {what} path {str(p)!r} does not exist")
        return p
    for name in names:
        if (root / name).exists():
            return root / name
    if what == "reports" and next(root.glob("*.xml"), None) is not None:
        return root  # the XML files lie in root itself
    raise ValueError(f"IU root {str(root)!r} has none of {list(names)}; pass {what}=...")


@dataclass
class OpenIIndex:
    """The report-image pairs of one split, in natural report-id order."""

    split: str
    image_paths: list[Path]
    texts: list[str]
    study_ids: list[str]


def _images_by_report(images_dir: Path) -> dict[str, list[Path]]:
    """report id (the ``CXR<n>`` before the first ``_``) -> its PNG files."""
    if not images_dir.is_dir():
        raise ValueError(f"IU images path {str(images_dir)!r} is not a folder")
    by_report: dict[str, list[Path]] = {}
    for p in images_dir.rglob("*"):
        if p.suffix.lower() == ".png" and p.is_file():
            by_report.setdefault(p.stem.split("_")[0], []).append(p)
    if not by_report:
        raise ValueError(f"IU images folder {str(images_dir)!r} has no .png files")
    return by_report


def _pair(collection, by_report: dict, split: str) -> OpenIIndex:
    """The reports of ``split`` with an image and a text, each with its first image in natural
    name order; warns about the others."""
    out = OpenIIndex(split, [], [], [])
    no_image, empty = [], []
    # natural id order (CXR2 before CXR10), the same for a folder and an archive
    order = sorted(range(len(collection.ids)), key=lambda k: _natural_key(collection.ids[k]))
    for k in order:
        rid, text = collection.ids[k], collection.texts[k]
        if hash_split(rid, SPLIT_SHARES) != split:
            continue
        imgs = by_report.get(rid)
        if not imgs:
            no_image.append(rid)
            continue
        if not text.strip():
            empty.append(rid)
            continue
        out.image_paths.append(min(imgs, key=lambda q: _natural_key(q.name)))
        out.texts.append(text)
        out.study_ids.append(rid)
    warn_skipped("reports without an image", no_image, f"IU {split}")
    warn_skipped("reports with no text", empty, f"IU {split}")
    return out


def index_openi(root, split: str = "train", *, reports=None, images=None) -> OpenIIndex:
    """The report-image pairs of one split of an IU / OpenI folder (see :class:`OpenIDataset`);
    a missing folder, no images or no pair raises ``ValueError`` naming the paths."""
    from ..extraction.readers import read_reports

    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"IU root {str(root)!r} is not a folder")
    split = normalize_split(split)
    reports_path = _find(root, _REPORT_NAMES, "reports", reports)
    images_dir = _find(root, _IMAGE_NAMES, "images", images)
    by_report = _images_by_report(images_dir)  # checked before the (slower) report reading
    out = _pair(read_reports(reports_path), by_report, split)
    if not out.image_paths:
        raise ValueError(f"IU {split}: no report in {str(reports_path)!r} has an image in "
                         f"{str(images_dir)!r} (images are matched by the 'CXR<n>_' prefix)")
    return out


class OpenIDataset(ReportImageDataset):
    """IU / OpenI report-image pairs, one image per report.

    ``reports``: the XML folder or archive (default: looked up in ``root``); ``images``: the PNG
    folder (default: looked up in ``root``). The image is the report's first PNG in natural
    name order. Study ids are the report ids (``CXR1``).
    """

    kind = "iu"

    def __init__(self, root, split: str = "train", *, reports=None, images=None,
                 image_size: int = 224, in_chans: int = 1, train: bool = False, normalize: str = "half",
                 transform: Callable | None = None, entities: str = "extracted", cache_dir=None,
                 progress: bool = True, sections: bool = True, aug_seed: int | None = None,
                 extractor=None):
        index = index_openi(root, split, reports=reports, images=images)
        self.split, self.image_paths = index.split, index.image_paths
        records = resolve_records(entities, index.study_ids, index.texts, cache_dir=cache_dir,
                                  progress=progress, extractor=extractor, where=f"IU {self.split}")
        self._setup(reports=index.texts, study_ids=index.study_ids, records=records,
                    transform=transform, image_size=image_size, in_chans=in_chans, train=train,
                    sections=sections, seed=aug_seed, normalize=normalize)

    def load_image(self, i: int):
        return load_image(self.image_paths[i], getattr(self.transform, "image_size", None))
