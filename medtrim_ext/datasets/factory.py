"""load_dataset: one entry point for every dataset kind."""

from __future__ import annotations

KINDS = ("phantoms", "manifest", "mimic", "iu")


def load_dataset(kind: str, split: str, *, root=None, image_size: int = 224, in_chans: int = 1,
                 train: bool = False, normalize: str = "half", entities: str = "extracted",
                 cache_dir=None, progress: bool = True, **options):
    """Build a dataset of the shared item format.

    Args:
        kind: ``"phantoms"`` (built-in synthetic data, no ``root``), ``"manifest"`` (``root`` =
            the CSV / Parquet manifest), ``"mimic"`` (``root`` = the MIMIC-CXR-JPG folder) or
            ``"iu"`` (``root`` = the IU / OpenI folder).
        split: ``"train"``, ``"validate"`` or ``"test"`` (``None`` for all rows of a manifest).
        image_size, in_chans, train, normalize: the :class:`ImageTransform` (``train``:
            augmentation; ``normalize``: ``"half"`` or ``"imagenet"``, which needs ``in_chans=3``).
        entities: ``"extracted"`` (spaCy extractor, cached) or ``"ground_truth"`` (phantoms and
            manifests with an ``attributes.jsonl``).
        cache_dir: folder of the entity cache (``entities.parquet``); None: in memory only.
        options: passed to the dataset class, e.g. ``n=``, ``seed=``, ``phantom_size=`` for
            phantoms, ``reports_root=`` for MIMIC, ``aug_seed=``, ``transform=``.
    """
    common = dict(image_size=image_size, in_chans=in_chans, train=train, normalize=normalize,
                  entities=entities, cache_dir=cache_dir, progress=progress)
    if kind == "phantoms":
        from .phantom_dataset import PhantomDataset

        if root is not None:
            raise ValueError("phantoms are generated: root must be None (use kind='manifest' for "
                             "phantoms written by write_phantom_dataset)")
        return PhantomDataset(split, **common, **options)
    if root is None:
        raise ValueError(f"kind {kind!r} needs root=<path>")
    if kind == "manifest":
        from .manifest import ManifestDataset

        return ManifestDataset(root, split, **common, **options)
    if kind == "mimic":
        from .mimic import MimicCxrDataset

        return MimicCxrDataset(root, split, **common, **options)
    if kind == "iu":
        from .openi import OpenIDataset

        return OpenIDataset(root, split, **common, **options)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
