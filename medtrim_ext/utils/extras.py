"""The optional parts of the install ("extras") and the error a missing one raises.

``pip install medtrim_ext`` is the core: torch and numpy (the kernels, ``MetaEntities``, the
miner, the losses and objectives, JSON-lines record files). Everything else is an extra, named in
``pyproject.toml``. A module that needs an extra calls :func:`require_extra` when it is imported,
so that a user without it reads which extra to install instead of "No module named spacy".
"""

from __future__ import annotations

import importlib
import importlib.util

# extra -> the import names it provides (what require_extra looks for), in pyproject.toml's order
EXTRAS = {
    "extract": ("spacy", "medspacy", "pandas", "pyarrow", "yaml", "tqdm"),
    "train": ("timm", "transformers", "tokenizers", "tensorboard", "PIL", "sklearn", "matplotlib",
              "pandas", "pyarrow", "yaml", "tqdm"),
    "pml": ("pytorch_metric_learning",),
    "open-clip": ("open_clip",),
}


class MissingExtraError(ImportError):
    """An optional dependency of medtrim_ext is not installed; the message names the extra."""

    def __init__(self, feature: str, extra: str, missing: list[str]):
        self.extra = extra
        self.missing = list(missing)
        super().__init__(
            f"{feature} needs the '{extra}' extra, which is not installed (missing: "
            f"{', '.join(self.missing)}). Install it with: pip install \"medtrim_ext[{extra}]\"",
            name=self.missing[0] if self.missing else None)


def missing_modules(modules) -> list[str]:
    """The import names in ``modules`` that cannot be found (nothing is imported)."""
    missing = []
    for name in modules:
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except (ImportError, ValueError):  # a parent package missing, or a broken __spec__
            missing.append(name)
    return missing


def require_extra(extra: str, feature: str, modules=None) -> None:
    """Raise :class:`MissingExtraError` when any of ``modules`` (default: all of the extra's) is
    missing. ``feature`` names what needs them in the message (e.g. "medtrim_ext.extraction")."""
    if extra not in EXTRAS:
        raise ValueError(f"extra must be one of {sorted(EXTRAS)}, got {extra!r}")
    missing = missing_modules(EXTRAS[extra] if modules is None else modules)
    if missing:
        raise MissingExtraError(feature, extra, missing)


def import_extra(module: str, extra: str, feature: str):
    """``importlib.import_module(module)``, raising :class:`MissingExtraError` when it is missing."""
    require_extra(extra, feature, [module.split(".")[0]])
    return importlib.import_module(module)
