"""Loads the compiled extension, refusing a torch other than the one it was built against."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

_REBUILD = (
    "Rebuild it against the torch you run: `make build` in the repository, or "
    "`pip install --no-build-isolation --force-reinstall --no-deps .` inside your environment "
    "(see README, 'Bring your own torch')."
)


def load_extension():
    """Import ``medtrim_ext._C`` (which registers the ``torch.ops.medtrim`` ops) and return it."""
    package_dir = Path(__file__).resolve().parent
    try:
        build_config = importlib.import_module("medtrim_ext._build_config")
    except ImportError:
        raise ImportError(
            f"medtrim_ext at {package_dir} has no compiled extension. If this is the source tree, "
            "Python found it before the installed package (for example `python -m ...` run from "
            "the repository root): build and install with `make build` or `pip install .`, and run "
            "tests with `.venv/bin/pytest`. To work on the source tree itself, install it in "
            "editable mode: `.venv/bin/pip install --no-build-isolation -e .` (README, 'Install')."
        ) from None
    if build_config.TORCH_VERSION != torch.__version__:
        raise ImportError(
            f"medtrim_ext was built against torch {build_config.TORCH_VERSION} but torch "
            f"{torch.__version__} is running. {_REBUILD}"
        )
    try:
        return importlib.import_module("medtrim_ext._C")
    except ImportError as exc:
        raise ImportError(f"medtrim_ext's compiled extension failed to load: {exc}. {_REBUILD}") from exc
