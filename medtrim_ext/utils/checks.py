"""Argument checks shared by every stage: each returns the checked value or raises an error that
names the argument, so that bad input stops with a clear message before it reaches a kernel.

A value of the wrong type raises :class:`ArgumentTypeError`, which is both a ``TypeError`` and a
``ValueError``: callers may catch either (an int given as ``"3"`` is a type error to some and an
invalid value to others).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch


class ArgumentTypeError(TypeError, ValueError):
    """An argument of the wrong type (a ``TypeError`` and a ``ValueError``)."""


_BOOLS = (bool, np.bool_)


def _is_int(value) -> bool:
    # NumPy's integer scalars (an element of an array, np.int64(3)) are ints; bools are not
    return isinstance(value, (int, np.integer)) and not isinstance(value, _BOOLS)


def check_int(name: str, value, minimum: int = 1) -> int:
    """``value`` as an int ``>= minimum`` (bools are not ints here; NumPy integers are)."""
    wanted = "a positive int" if minimum == 1 else f"an int >= {minimum}"
    if not _is_int(value):
        raise ArgumentTypeError(f"{name} must be {wanted}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return int(value)


def check_number(name: str, value, *, minimum: float | None = None, positive: bool = False) -> float:
    """``value`` as a finite float (``>= minimum``; ``> 0`` with ``positive``); NumPy's integer
    and float scalars (``np.float32(0.3)``) are numbers, bools (Python's or NumPy's) are not."""
    if isinstance(value, _BOOLS) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ArgumentTypeError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}, got {value!r}")
    return float(value)


def check_tensor(name: str, x, *, floating: bool = False, dim: int | None = None) -> torch.Tensor:
    """``x`` as a tensor (floating-point with ``floating``; ``dim`` dimensions if given)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if floating and not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if dim is not None and x.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(x.shape)}")
    return x


def check_ids(name: str, ids, n: int, device: torch.device | None,
              owner: str = "the entities are") -> torch.Tensor:
    """``ids`` as int64 after checking it is an integer tensor of shape ``(n,)`` on ``device``
    (where ``owner`` lives; ``None``: any device)."""
    check_tensor(name, ids)
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {ids.dtype}")
    if tuple(ids.shape) != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(ids.shape)}")
    if device is not None and ids.device != device:
        raise ValueError(f"{name} is on {ids.device} but {owner} on {device}")
    return ids.to(torch.int64)


def check_generator(generator) -> None:
    """``None`` or a CPU ``torch.Generator`` (the miners draw their random choices on the CPU)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU torch.Generator, got one on {generator.device}")


def parse_device(name, what: str = "device") -> torch.device:
    """``torch.device(name)``, or a ValueError naming ``what`` (``--device``, ``train.device``) and
    the devices to give: torch's own error for ``"tpu"`` is a RuntimeError listing its backends."""
    try:
        return torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{what} must be cpu, cuda, cuda:N, mps or auto, got {name!r}") from None


def check_folder_path(path, what: str) -> Path:
    """``path`` as a Path that is, or could become, a folder: neither it nor any folder above it
    is an existing non-folder (a ValueError naming ``what``; NotADirectoryError otherwise surfaces
    deep inside the first write). Nothing is created; write access is not checked."""
    path = Path(path)
    above = path
    while not os.path.lexists(above) and above != above.parent:
        above = above.parent
    if os.path.lexists(above) and not above.is_dir():
        where = "it" if above == path else f"{str(above)!r} above it"
        raise ValueError(f"{what} {str(path)!r} must be a folder, but {where} is a file")
    return path


def parse_json(text: str, where: str):
    """``json.loads(text)``; invalid JSON raises a ValueError that starts with ``where``."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where} is not valid JSON: {exc}") from None
    except RecursionError:   # [[[[...: json recurses once per level
        raise ValueError(f"{where} is JSON nested too deeply to read") from None


def read_json(path: str | Path, what: str):
    """The JSON document in the file ``path``; a file that cannot be read or is not JSON raises a
    ValueError naming ``what`` and the path (``"cannot read vocabulary file '...'"``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {what} {str(path)!r}: {exc}") from None
    return parse_json(text, f"{what} {str(path)!r}")


def check_instance(name: str, value, cls: type):
    """``value`` if it is a ``cls``, else a TypeError: ``"loss must be an InfoNCELoss, got X"``."""
    if not isinstance(value, cls):
        article = "an" if cls.__name__[0] in "AEIOU" else "a"
        raise TypeError(f"{name} must be {article} {cls.__name__}, got {type(value).__name__}")
    return value


def reject_renamed(owner: str, given: dict, renamed: dict[str, str]) -> None:
    """Refuse keyword arguments that were renamed (``renamed``: old name -> new name) or never
    existed, as Python would, but with the new name in the message: an old keyword must not be
    accepted silently, since its meaning may differ (``temperature`` of one class set another
    temperature than that of another)."""
    for key in given:
        if key in renamed:
            raise TypeError(f"{owner}() got an unexpected keyword argument {key!r}: it was renamed "
                            f"{renamed[key]!r}")
        raise TypeError(f"{owner}() got an unexpected keyword argument {key!r}")
