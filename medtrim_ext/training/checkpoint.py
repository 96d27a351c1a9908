"""Checkpoints: everything a run needs to continue exactly where it stopped, written atomically.

A checkpoint is one ``torch.save`` file written to a temporary name and renamed over the old one
(:func:`medtrim_ext.utils.io.atomic_write`), so a crash while saving leaves the previous checkpoint intact.

It holds only tensors and plain Python values (numbers, strings, None, lists, tuples, dicts): the
step, the run's config and model config (dicts), the state dicts of the model, the objective step
(its parameters and the memory bank's buffers), the optimizer, the LR schedule and the fp16
GradScaler, the random number generator
states (Python's as a tuple of ints, NumPy's as an int64 tensor, torch's and CUDA's as byte
tensors), the world size and the tokenizer's folder. :func:`load_checkpoint` reads it with
``torch.load(weights_only=True)``, so a file that holds anything else (a pickle that would import
and call code) is refused before any of it runs. Checkpoints written before this format hold
NumPy's RNG state as a NumPy array; the loader allows exactly that type besides the defaults.
"""

from __future__ import annotations

import pickle
import random
import re
from pathlib import Path

import numpy as np
import torch

from ..utils.io import atomic_write

FORMAT = "medtrim_ext.train/1"
CHECKPOINT_NAME = "last.pt"


def rng_state() -> dict:
    """Python's, NumPy's, torch's (and CUDA's, when in use) RNG states, as tensors and plain values."""
    np_state = np.random.get_state(legacy=False)  # {"bit_generator", "state": {"key", "pos"}, ...}
    state = {"python": random.getstate(),
             "numpy": {"bit_generator": np_state["bit_generator"],
                       "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                       "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                       "gauss": float(np_state["gauss"])},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state` (also the NumPy tuple of older checkpoints)."""
    random.setstate(state["python"])
    np_state = state["numpy"]
    if isinstance(np_state, dict):
        np.random.set_state({"bit_generator": np_state["bit_generator"],
                             "state": {"key": np_state["key"].numpy().astype(np.uint32),
                                       "pos": np_state["pos"]},
                             "has_gauss": np_state["has_gauss"], "gauss": np_state["gauss"]})
    else:
        np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write ``state`` (plus the format tag) to ``path`` atomically."""
    path = Path(path)
    with atomic_write(path, "wb") as f:
        torch.save({"format": FORMAT, **state}, f)
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder (its ``last.pt``); ``ValueError`` naming what is missing."""
    path = Path(path)
    if path.is_dir():
        if not (path / CHECKPOINT_NAME).is_file():
            raise ValueError(f"run folder {str(path)!r} has no checkpoint {CHECKPOINT_NAME!r}")
        return path / CHECKPOINT_NAME
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    return path


def _legacy_globals() -> list:
    """What checkpoints written before the plain-value RNG state need besides torch's defaults:
    the uint32 NumPy array of their NumPy RNG state, and nothing else."""
    try:
        from numpy.core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - NumPy 2 moved it (the pickles keep the old name)
        from numpy._core.multiarray import _reconstruct
    return [(_reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype,
            type(np.dtype(np.uint32))]


def _safe_load(path: Path, map_location):
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:  # pragma: no cover - torch < 2.5: torch's defaults only
        return torch.load(path, map_location=map_location, weights_only=True)
    with safe_globals(_legacy_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


# what torch.save writes: a zip archive, or (legacy format) a pickle, which starts with its PROTO opcode
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


def _not_torch_file(path: Path) -> str | None:
    """Why ``path`` cannot be a ``torch.save`` file, judged by its first bytes (None: it may be):
    torch's own error for such a file is an unpickler message that reads like a refused object."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        return f"cannot be opened: {exc.strerror or exc}"
    if not head:
        return "is empty (0 bytes): it was not written completely, or is not a checkpoint"
    if not head.startswith(_TORCH_MAGIC):
        return ("is not a PyTorch checkpoint (torch.save writes a zip archive; this file starts "
                f"with {head!r})")
    return None


def _reason(exc: BaseException) -> str:
    """``exc``'s message, or its type where it has none (EOFError(''))."""
    return str(exc).strip() or type(exc).__name__


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (``path``: the file, or a run folder);
    a clear ``ValueError`` for anything else.

    Loads with ``torch.load(weights_only=True)``: a file holding objects other than tensors and
    plain values is refused without running any of its code.
    """
    path = resolve_checkpoint(path)
    problem = _not_torch_file(path)
    if problem is not None:
        raise ValueError(f"checkpoint {str(path)!r} {problem}")
    try:
        state = _safe_load(path, map_location)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if "weights only" not in str(exc).lower() or not found:
            # a truncated or foreign pickle (e.g. "Unsupported operand"): no object was refused
            detail = [line for line in str(exc).splitlines() if "operand" in line.lower()]
            raise ValueError(f"checkpoint {str(path)!r} is not a readable PyTorch checkpoint (corrupt "
                             f"or another format): {detail[0].strip() if detail else _reason(exc)}") from None
        what = f" ({found.group(1)})"
        raise ValueError(
            f"checkpoint {str(path)!r} holds objects other than tensors and plain values{what}; it "
            "was not loaded, since unpickling them can run code. medtrim_ext checkpoints hold only "
            "tensors, numbers, strings, lists and dicts: re-create it, or, only if you trust the "
            "file, convert it yourself with torch.load(weights_only=False)") from None
    except Exception as exc:  # truncated or foreign files raise many exception types
        raise ValueError(f"checkpoint {str(path)!r} cannot be read: {_reason(exc)}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"checkpoint {str(path)!r} is not a medtrim_ext training checkpoint")
    return state
