"""PhantomDataset: the built-in synthetic phantoms as a dataset (in memory, no files)."""

from __future__ import annotations

from typing import Callable

from ...utils.checks import check_int
from ..base import ReportImageDataset, normalize_split, resolve_records
from .attributes import split_seed
from .generate import generate_phantoms

DEFAULT_SIZES = {"train": 4000, "validate": 500, "test": 500}


class PhantomDataset(ReportImageDataset):
    """Synthetic chest-radiograph phantoms with known findings (see :mod:`.phantoms`).

    Args:
        split: "train", "validate" or "test"; each split is generated from its own seed derived
            from ``seed`` (:func:`~.phantoms.split_seed`), so splits never share a sample.
        n: number of samples (default 4000 / 500 / 500 for train / validate / test).
        seed: base seed.
        image_size, in_chans, train, normalize: the default :class:`ImageTransform` (``train``:
            augment; ``normalize``: ``"half"`` or ``"imagenet"``).
        phantom_size: resolution the phantoms are rendered at (default ``image_size``).
        entities: ``"ground_truth"`` (the generator's ideal records) or ``"extracted"`` (the
            entity extractor run on the reports, through the cache in ``cache_dir``).
        sections: ``texts`` are the FINDINGS / IMPRESSION text only (default) or whole reports.
        aug_seed: seeds the per-item augmentation (deterministic training runs).

    ``attributes`` holds the ground truth of every sample (for exact retrieval scoring).
    """

    kind = "phantoms"

    def __init__(self, split: str = "train", n: int | None = None, seed: int = 0, *,
                 image_size: int = 64, in_chans: int = 1, train: bool = False, normalize: str = "half",
                 transform: Callable | None = None, phantom_size: int | None = None,
                 entities: str = "ground_truth", cache_dir=None, progress: bool = False,
                 sections: bool = True, aug_seed: int | None = None, extractor=None):
        self.split = normalize_split(split)
        n = check_int("n", DEFAULT_SIZES[self.split] if n is None else n)
        self.base_seed = check_int("seed", seed, minimum=0)
        self.phantoms = generate_phantoms(n, seed=split_seed(seed, self.split),
                                          image_size=phantom_size or image_size, progress=progress)
        ph = self.phantoms
        records = resolve_records(entities, ph.study_ids, ph.reports, ground_truth=ph.records,
                                  cache_dir=cache_dir, progress=progress, extractor=extractor,
                                  where="phantoms")
        self._setup(reports=ph.reports, study_ids=ph.study_ids, records=records,
                    transform=transform, image_size=image_size, in_chans=in_chans, train=train,
                    sections=sections, attributes=ph.attributes, seed=aug_seed, normalize=normalize)

    @property
    def images(self):
        """uint8 ``(N, H, W)`` phantom images before the transform."""
        return self.phantoms.images

    def load_image(self, i: int):
        return self.phantoms.images[i]
