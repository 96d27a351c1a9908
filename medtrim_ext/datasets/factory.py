"""load_dataset: one entry point for every dataset kind."""

from __future__ import annotations

KINDS = ("phantoms", "manifest", "mimic", "iu", "iu_phantoms")
# kinds that generate their images: no root, and per-split sizes (data.options.n_train, ...)
GENERATED_KINDS = ("phantoms", "iu_phantoms")


def load_dataset(kind: str, split: str, *, root=None, image_size: int = 224, in_chans: int = 1,
                 train: bool = False, normalize: str = "half", entities: str = "extracted",
                 cache_dir=None, progress: bool = True, **options):
    """Build a dataset of the shared item format.

    Args:
        kind: ``"phantoms"`` (built-in synthetic data, no ``root``), ``"manifest"`` (``root`` =
            the CSV / Parquet manifest), ``"mimic"`` (``root`` = the MIMIC-CXR-JPG folder) or
            ``"iu"`` (``root`` = the IU / OpenI folder) or ``"iu_phantoms"`` (the real IU reports
            with phantom images of their findings; no ``root``: the reports come from the
            installed ``torchxrayvision``, or the ``reports=`` option).
        split: ``"train"``, ``"validate"`` or ``"test"`` (``None`` for all rows of a manifest).
        image_size, in_chans, train, normalize: the :class:`ImageTransform` (``train``:
            augmentation; ``normalize``: ``"half"`` or ``"imagenet"``, which needs ``in_chans=3``).
        entities: ``"extracted"`` (spaCy extractor, cached) or ``"ground_truth"`` (phantoms and
            manifests with an ``attributes.jsonl``).
        cache_dir: folder of the entity cache (``entities.parquet``); None: in memory only.
        options: passed to the dataset class (a config's ``data.options``), e.g. ``n=``,
            ``seed=``, ``phantom_size=`` for phantoms, ``split_fractions=``, ``label_columns=``,
            ``attributes=`` for manifests, ``reports_root=`` for MIMIC, ``aug_seed=``,
            ``transform=``. An option the kind does not take raises ``ValueError`` naming it.
    """
    common = dict(image_size=image_size, in_chans=in_chans, train=train, normalize=normalize,
                  entities=entities, cache_dir=cache_dir, progress=progress)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind == "phantoms":
        if root is not None:
            raise ValueError("phantoms are generated: root must be None (use kind='manifest' for "
                             "phantoms written by write_phantom_dataset)")
    elif kind == "iu_phantoms":
        if root is not None:
            raise ValueError("iu_phantoms renders its images: root must be None (the report archive "
                             "is the 'reports' option, default: torchxrayvision's copy)")
    elif root is None:
        raise ValueError(f"kind {kind!r} needs root=<path>")
    cls = dataset_class(kind)
    accepted = dataset_options(kind)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"dataset kind {kind!r} takes no option(s) {unknown} (data.options of a "
                         f"config); its options: {accepted}")
    if kind in GENERATED_KINDS:
        return cls(split, **common, **options)
    return cls(root, split, **common, **options)


def dataset_class(kind: str):
    """The dataset class of ``kind`` (imported on demand)."""
    if kind == "phantoms":
        from .phantoms import PhantomDataset as cls
    elif kind == "manifest":
        from .manifest import ManifestDataset as cls
    elif kind == "mimic":
        from .mimic import MimicCxrDataset as cls
    elif kind == "iu":
        from .openi import OpenIDataset as cls
    elif kind == "iu_phantoms":
        from .iu_phantoms import IUPhantomDataset as cls
    else:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return cls


_COMMON = ("self", "root", "path", "split", "image_size", "in_chans", "train", "normalize",
           "entities", "cache_dir", "progress")


def dataset_options(kind: str) -> list[str]:
    """The keyword options of a dataset kind beyond :func:`load_dataset`'s own arguments."""
    import inspect

    params = inspect.signature(dataset_class(kind).__init__).parameters
    return sorted(name for name, p in params.items() if name not in _COMMON
                  and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
