"""The item format every dataset shares, and the helpers the datasets have in common.

``dataset[i]`` is ``{"image": float32 (C, H, W), "text": str, "entities": record dict,
"index": i, "study_id": str}``. Each dataset also exposes, for all samples at once:
``texts``, ``reports`` (the raw report text, which entity extraction reads), ``study_ids``,
``records``, ``attributes`` (ground-truth dicts, or None), ``labels`` (float ``(N, C)`` with
0 / 1 / NaN, or None) and ``label_names``.
"""

from __future__ import annotations

import functools
import hashlib
import re
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..utils.checks import check_folder_path, check_int
from .transforms import ImageTransform

SPLITS = ("train", "validate", "test")
_SPLIT_ALIASES = {"train": "train", "training": "train", "validate": "validate", "val": "validate",
                  "valid": "validate", "validation": "validate", "dev": "validate", "test": "test",
                  "testing": "test"}
ENTITY_MODES = ("extracted", "ground_truth")


DEFAULT_SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


def hash_split(key: str, fractions=DEFAULT_SPLIT_FRACTIONS) -> str:
    """train / validate / test of a group key (a report, study or patient id) by a hash of the key
    alone, so a key keeps its split when other rows are added, removed or reordered.

    The first 8 bytes of its SHA-256 (little-endian) give a bucket out of 100 and, from the
    remaining bits, a place within the bucket; that position in [0, 100) is compared with the
    cumulative ``fractions`` (train, validate, test) x 100. For whole-percent fractions the bucket
    alone decides (the IU split of the earlier versions, which used only the bucket)."""
    h = int.from_bytes(hashlib.sha256(str(key).encode("utf-8")).digest()[:8], "little")
    position = h % 100 + (h // 100) / (2**64 // 100 + 1)
    if position < 100 * fractions[0]:
        return "train"
    return "validate" if position < 100 * (fractions[0] + fractions[1]) else "test"


def check_split_fractions(fractions, where: str = "split_fractions") -> tuple[float, float, float]:
    """Three shares of train / validate / test in [0, 1] summing to 1, as floats."""
    ok = (isinstance(fractions, (list, tuple)) and len(fractions) == 3
          and all(isinstance(f, (int, float)) and not isinstance(f, bool) and 0 <= f <= 1 for f in fractions)
          and abs(sum(fractions) - 1) <= 1e-6)
    if not ok:
        raise ValueError(f"{where} must be three shares of train / validate / test in [0, 1] summing "
                         f"to 1, e.g. [0.8, 0.1, 0.1]; got {fractions!r}")
    return tuple(float(f) for f in fractions)


def normalize_split(split, where: str = "split") -> str:
    """'train' / 'validate' / 'test' (also accepts val, valid, validation, dev, testing)."""
    if not isinstance(split, str) or split.strip().lower() not in _SPLIT_ALIASES:
        raise ValueError(f"{where} must be one of {SPLITS} (or val/valid/validation), got {split!r}")
    return _SPLIT_ALIASES[split.strip().lower()]


@functools.lru_cache(maxsize=1)
def _section_filter():
    from ..extraction.ontology import ExtractionOntology
    from ..extraction.sections import SectionFilter

    onto = ExtractionOntology.default()
    return SectionFilter(onto.keep_sections, onto.ignore_sections, onto.deid_tokens)


def image_text(report: str) -> str:
    """The part of a report that describes the image: FINDINGS / IMPRESSION text (when the report
    has such headers), de-identification placeholders neutralised, whitespace collapsed; the
    same section policy the entity extractor applies."""
    text = _section_filter()(report)
    # the filter ends each section with " ." so sentences cannot run together; drop the dot
    # where the section already ended a sentence ("clear. . No" -> "clear. No")
    return _DOUBLE_STOP.sub(r"\1", text)


_DOUBLE_STOP = re.compile(r"([.!?])\s+\.(?=\s|$)")


def load_image(path, size_hint: int | None = None):
    """Read a grayscale image file: uint8 tensor ``(H, W)`` for 8-bit files, float32 in
    ``[0, 1]`` for 16-bit ones. ``size_hint``: the size the image will be resized to; JPEGs are
    then decoded at a reduced scale (much faster for full-size radiographs).

    Raises ``ValueError`` naming the file when it is missing or unreadable."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            if size_hint and im.format == "JPEG":
                im.draft("L", (size_hint, size_hint))
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.int64)
                top = 65535.0 if arr.max() > 255 else 255.0
                return torch.from_numpy((np.clip(arr, 0, top) / top).astype(np.float32))
            if im.mode == "F":
                arr = np.asarray(im, dtype=np.float32)
                lo, hi = float(arr.min()), float(arr.max())
                return torch.from_numpy((arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr))
            if im.mode != "L":
                im = im.convert("L")
            return torch.from_numpy(np.array(im, dtype=np.uint8))
    except FileNotFoundError:
        raise ValueError(f"image file {str(path)!r} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ValueError(f"cannot read image {str(path)!r}: {exc}") from None


def resolve_records(entities: str, study_ids: Sequence[str], reports: Sequence[str], *,
                    ground_truth: Sequence[dict] | None = None, cache_dir=None,
                    progress: bool = True, extractor=None, n_process: int = 1,
                    where: str = "dataset") -> list[dict]:
    """Meta-entity records of the samples: ``"ground_truth"`` (given records) or
    ``"extracted"`` (the extractor, through an :class:`EntityCache` in ``cache_dir`` or an
    in-memory one)."""
    from .entity_cache import EntityCache

    if entities not in ENTITY_MODES:
        raise ValueError(f"entities must be one of {ENTITY_MODES}, got {entities!r}")
    if entities == "ground_truth":
        if ground_truth is None:
            raise ValueError(f"{where} has no ground-truth records: use entities='extracted'")
        return [dict(r) for r in ground_truth]
    if cache_dir is not None:
        check_folder_path(cache_dir, "cache_dir")
    cache = EntityCache(None if cache_dir is None else Path(cache_dir) / "entities.parquet")
    return cache.records_for(study_ids, reports, extractor=extractor, progress=progress,
                             n_process=n_process)


def labels_tensor(rows, where: str) -> torch.Tensor:
    """Float ``(N, C)`` labels from rows of cells: 1 / 0 stay, -1 (uncertain) and blanks become
    NaN. Any other value is an error naming ``where``."""
    out = np.full((len(rows), len(rows[0]) if rows else 0), np.nan, dtype=np.float32)
    for i, row in enumerate(rows):
        for j, v in enumerate(row):
            if v is None or (isinstance(v, str) and not v.strip()):
                continue
            try:
                f = float(v)
            except (TypeError, ValueError):
                raise ValueError(f"{where}: row {i}, column {j}: label {v!r} is not a number") from None
            if f != f or f == -1.0:
                continue
            if f not in (0.0, 1.0):
                raise ValueError(f"{where}: row {i}, column {j}: label {v!r} must be 1, 0, -1 or blank")
            out[i, j] = f
    return torch.from_numpy(out)


class ReportImageDataset(Dataset):
    """Base of the datasets: holds the per-sample lists and builds items.

    Subclasses call :meth:`_setup` and implement :meth:`load_image`. Without a ``transform``,
    images go through an :class:`ImageTransform` (``image_size``, ``in_chans``, ``train``,
    ``normalize``: ``"half"`` or ``"imagenet"``). ``seed``: when set, the
    train-time augmentation of item ``i`` is drawn from a generator seeded by
    ``(seed, epoch, i)`` (see :meth:`set_epoch`), so it does not depend on worker layout.
    """

    kind = "dataset"

    def _setup(self, *, reports: Sequence[str], study_ids: Sequence[str], records: Sequence[dict],
               transform: Callable | None, image_size: int, in_chans: int, train: bool,
               sections: bool = True, attributes: Sequence[dict] | None = None,
               labels: torch.Tensor | None = None, label_names: Sequence[str] = (),
               seed: int | None = None, normalize: str = "half"):
        n = len(reports)
        if not (len(study_ids) == len(records) == n):
            raise ValueError(f"{self.kind}: {n} reports, {len(study_ids)} study ids, {len(records)} records")
        if attributes is not None and len(attributes) != n:
            raise ValueError(f"{self.kind}: {len(attributes)} attribute dicts for {n} samples")
        if labels is not None and (labels.dim() != 2 or labels.shape[0] != n or labels.shape[1] != len(label_names)):
            raise ValueError(f"{self.kind}: labels must be ({n}, {len(label_names)}), got {tuple(labels.shape)}")
        if transform is not None and normalize != "half":
            raise ValueError(f"normalize={normalize!r} applies to the default ImageTransform; a "
                             "custom transform normalises its images itself")
        if seed is not None:
            check_int("seed", seed, minimum=0)  # SeedSequence takes no negative seeds
        self.reports = list(reports)
        self.texts = [image_text(r) for r in self.reports] if sections else list(self.reports)
        self.study_ids = [str(s) for s in study_ids]
        self.records = list(records)
        self.attributes = None if attributes is None else list(attributes)
        self.labels = labels
        self.label_names = list(label_names)
        self.transform = transform if transform is not None else ImageTransform(
            image_size, in_chans, train, normalize=normalize)
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.reports)

    def set_epoch(self, epoch: int) -> None:
        """Epoch number mixed into the per-item augmentation seed (with ``seed`` set)."""
        self.epoch = int(epoch)

    def load_image(self, i: int):  # pragma: no cover - abstract
        raise NotImplementedError

    def _generator(self, i: int) -> torch.Generator | None:
        if self.seed is None:
            return None
        mixed = np.random.SeedSequence([self.seed, self.epoch, i]).generate_state(1, np.uint64)[0]
        return torch.Generator().manual_seed(int(mixed) & ((1 << 63) - 1))

    def __getitem__(self, i) -> dict:
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            if isinstance(i, torch.Tensor) and i.dim() == 0 and not i.is_floating_point():
                i = int(i)
            else:
                raise TypeError(f"index must be an int, got {type(i).__name__}")
        n = len(self)
        i = int(i)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {self.kind} of length {n}")
        i %= n
        image = self.load_image(i)
        if isinstance(self.transform, ImageTransform):
            image = self.transform(image, generator=self._generator(i))
        else:  # a user transform (torchvision, ...) takes the image alone
            image = self.transform(image)
        return {"image": image, "text": self.texts[i], "entities": self.records[i], "index": i,
                "study_id": self.study_ids[i]}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, transform={self.transform!r})"


def warn_skipped(what: str, skipped: list, where: str) -> None:
    if skipped:
        example = ", ".join(map(str, skipped[:3]))
        warnings.warn(f"{where}: skipped {len(skipped)} {what} (e.g. {example})", stacklevel=3)
