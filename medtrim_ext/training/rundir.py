"""The run folder: where a run writes, and whether starting a run continues the one already there.

- ``train.out_dir`` unset (the default): every run gets a new folder ``runs/<objective.kind>-<time>``
  (``-2``, ``-3``, ... when two runs start in the same second), and the extracted meta-entities
  are cached in ``runs/entity-cache``, shared by those runs.
- ``train.resume`` (what happens when ``train.out_dir`` already holds a run):

  - ``auto`` (default): continue ``<out_dir>/last.pt`` when it exists, if the config is the same
    apart from the keys in :data:`RESUMABLE_KEYS` (``train.steps`` to extend a run, logging,
    checkpointing, the device, data-loader workers, the entity-cache folder, ``eval.*``). Any other
    difference is a ``ValueError`` that lists the differing keys; so is a folder with the
    ``config.json`` of another config but no checkpoint yet.
  - ``force``: continue ``<out_dir>/last.pt`` with the new config on purpose; the differences are
    listed in a warning. A checkpoint that does not fit the new config (another model or
    objective) is still a ``ValueError``.
  - ``never``: a new run only; a ``ValueError`` if ``out_dir`` already holds one.
  - a path to a checkpoint: continue that run (into ``out_dir``, which must not hold another run);
    naming the checkpoint is the explicit choice, so config differences are listed in a warning.

  Changing ``train.steps`` when continuing recomputes the learning-rate schedule for the new length
  (warm-up and decay are functions of the step and the total).

Nothing is written here: the checks run before the loop writes ``config.json`` or anything else.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no advisory locks (see lock_run_dir)
    fcntl = None

from .checkpoint import CHECKPOINT_NAME, load_checkpoint
from .config import Config, replace, upgrade_config_dict

DEFAULT_RUNS_ROOT = Path("runs")
SHARED_CACHE = "entity-cache"
CONFIG_NAME = "config.json"
RESUME_MODES = ("auto", "force", "never")

# (section, key) that may differ between a run and its continuation; (section,): the whole section
RESUMABLE_KEYS = {("train", "steps"), ("train", "resume"), ("train", "out_dir"), ("train", "progress"),
                  ("train", "log_every"), ("train", "ckpt_every"), ("train", "tensorboard"),
                  ("train", "sync_timing"), ("train", "device"), ("data", "num_workers"),
                  ("data", "cache_dir"), ("eval",)}


def config_inputs(cfg: Config) -> dict:
    """The files and folders a config reads, by key (``{"data.root": ...}``; unset keys are
    None): what no output of a run or an evaluation may replace."""
    options = cfg.data.options if isinstance(cfg.data.options, dict) else {}
    image = cfg.model.image if isinstance(cfg.model.image, dict) else {}
    text = cfg.model.text if isinstance(cfg.model.text, dict) else {}
    return {"data.root": cfg.data.root, "data.options.attributes": options.get("attributes"),
            "data.options.reports": options.get("reports"), "model.checkpoint": cfg.model.checkpoint,
            "model.image.checkpoint": image.get("checkpoint"), "model.text.pretrained": text.get("pretrained"),
            "model.tokenizer": cfg.model.tokenizer}


def default_out_dir(kind: str, root: Path = DEFAULT_RUNS_ROOT, now: float | None = None) -> Path:
    """``<root>/<kind>-<YYYYmmdd-HHMMSS>``; :func:`claim_new_dir` adds a ``-2``, ``-3``, ...
    suffix when another run has taken that name."""
    return root / f"{kind}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}"


RUN_LOCK_NAME = ".run.lock"


# the run locks this process holds. A flock belongs to the open file, which fork shares: a forked
# child (a DataLoader worker) would keep a killed run's folder locked until it noticed and exited,
# so a resume right after SIGKILL was refused. Children close their copies as they start.
_HELD_LOCK_FDS: set[int] = set()


def _close_run_locks_in_child() -> None:
    for fd in _HELD_LOCK_FDS:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCK_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_run_locks_in_child)


class RunLock:
    """An exclusive hold on a run folder (see :func:`lock_run_dir`); :meth:`release` lets it go
    (so does the end of the process)."""

    def __init__(self, fd: int | None):
        self._fd, self._pid = fd, os.getpid()
        if fd is not None:
            _HELD_LOCK_FDS.add(fd)

    def release(self) -> None:
        # in a forked child the descriptor is already closed (and its number may be reused)
        if self._fd is not None and self._pid == os.getpid():
            _HELD_LOCK_FDS.discard(self._fd)
            os.close(self._fd)   # closing releases the flock
        self._fd = None

    __del__ = release


def lock_run_dir(out_dir) -> RunLock:
    """Hold ``out_dir`` for one run: an exclusive ``fcntl.flock`` on ``<out_dir>/.run.lock``, which
    records the holder's process id and host. Two runs in one folder would mix their
    ``metrics.csv``, ``config.json`` and ``last.pt``, so a second run raises ``ValueError`` naming
    the folder and the holder's process id. The lock goes with the process that holds it (a
    killed run leaves no stale lock). Where ``fcntl`` is missing (Windows) folders are not locked.
    """
    if fcntl is None:
        return RunLock(None)
    out_dir = Path(out_dir)
    lock = out_dir / RUN_LOCK_NAME
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise ValueError(f"cannot create the lock file {str(lock)!r} of train.out_dir "
                         f"{str(out_dir)!r}: {exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:   # BlockingIOError: another run holds it
        try:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
        finally:
            os.close(fd)
        who = f"process {holder[0]}" + (f" on {holder[1]}" if len(holder) > 1 else "") if holder else "process ?"
        raise ValueError(f"train.out_dir {str(out_dir)!r} is in use by another run ({who}, lock file "
                         f"{str(lock)!r}): two runs in one folder would mix their checkpoints and "
                         "logs; wait for it to finish, or choose another train.out_dir") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    return RunLock(fd)


def claim_new_dir(path: Path) -> Path:
    """Create ``path`` (or the first free ``path-2``, ``path-3``, ...) so that no other run can
    take it; returns the folder created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    base, n = path, 2
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            path, n = base.with_name(f"{base.name}-{n}"), n + 1


def with_default_out_dir(cfg: Config) -> Config:
    """``cfg`` with ``train.out_dir`` set to a new :func:`default_out_dir` (and, for extracted
    meta-entities without ``data.cache_dir``, the cache shared by default runs)."""
    data = {}
    if cfg.data.entities == "extracted" and not cfg.data.cache_dir:
        data["cache_dir"] = str(DEFAULT_RUNS_ROOT / SHARED_CACHE)
    return replace(cfg, train={"out_dir": str(default_out_dir(cfg.objective.kind))}, data=data)


def _resumable(path: tuple) -> bool:
    return path[:1] in RESUMABLE_KEYS or path[:2] in RESUMABLE_KEYS


def _diff(before, after, path: tuple, out: list) -> None:
    if isinstance(before, dict) and isinstance(after, dict):
        for key in list(before) + [k for k in after if k not in before]:
            _diff(before.get(key), after.get(key), path + (key,), out)
    elif before != after and not _resumable(path):
        out.append(f"{'.'.join(map(str, path))}: {before!r} -> {after!r}")


def config_changes(old: dict, new: dict) -> list[str]:
    """``"section.key: old -> new"`` for every key of ``new`` that differs from ``old`` and may
    not change on resume (keys a config of an older version lacks count as their defaults, keys it
    names by an older name count under the new one)."""
    old = upgrade_config_dict(old)
    defaults = Config().to_dict()
    before = {s: {**defaults.get(s, {}), **(old.get(s) or {})} for s in defaults}
    after = {s: {**defaults.get(s, {}), **(new.get(s) or {})} for s in defaults}
    changes: list[str] = []
    _diff(before, after, (), changes)
    return changes


def _resumable_text() -> str:
    return ", ".join(".".join(k) + (".*" if len(k) == 1 else "") for k in sorted(RESUMABLE_KEYS))


def _read_config_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the run's config {str(path)!r}: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"run config {str(path)!r} is not a mapping of sections")
    return data


def _refuse(out_dir: Path, what: str, changes: list[str], can_force: bool) -> ValueError:
    lines = "\n".join(f"  {c}" for c in changes)
    fix = ("To start a new run, choose another train.out_dir (or leave it unset: each run then gets "
           "its own runs/<objective.kind>-<time> folder)")
    fix += (". To continue this run with the new settings on purpose, add train.resume=force."
            if can_force else ", or delete that folder.")
    return ValueError(f"train.out_dir={str(out_dir)!r} holds {what} with another config; "
                      f"{len(changes)} key(s) differ:\n{lines}\n{fix}\n"
                      f"(Keys that may change when a run continues: {_resumable_text()}.)")


def _check_started(cfg_file: Path, new: dict) -> None:
    """A folder with ``config.json`` but no checkpoint (a run stopped before its first one) may be
    started again only with the same config (its tokenizer and mined triplets are reused)."""
    if cfg_file.exists():
        changes = config_changes(_read_config_json(cfg_file), new)
        if changes:
            raise _refuse(cfg_file.parent, "a run that has no checkpoint yet", changes, can_force=False)


def plan_resume(cfg: Config, out_dir: Path, *, fresh_dir: bool = False,
                warn: bool = True) -> tuple[Path | None, dict | None]:
    """The checkpoint this run continues and its loaded state, or ``(None, None)`` for a new run;
    ``ValueError`` when starting would make the run in ``out_dir`` silently another run (see the
    module docstring). ``fresh_dir``: ``out_dir`` is a new default folder (nothing to continue)."""
    mode = cfg.train.resume
    last, cfg_file = out_dir / CHECKPOINT_NAME, out_dir / CONFIG_NAME
    new = cfg.to_dict()
    if mode == "force" and fresh_dir:
        raise ValueError("train.resume=force continues the run in train.out_dir: set train.out_dir "
                         "to that run's folder")
    if mode == "never" and not fresh_dir and (last.exists() or cfg_file.exists()):
        raise ValueError(f"train.resume=never but train.out_dir={str(out_dir)!r} already holds a run; "
                         "choose another train.out_dir (or leave it unset: each run then gets its own "
                         "runs/<objective.kind>-<time> folder), or delete that folder")
    if mode in RESUME_MODES:
        if fresh_dir or mode == "never":
            return None, None
        if not last.exists():
            if mode == "force":
                raise ValueError(f"train.resume=force: there is no checkpoint {str(last)!r} to continue")
            _check_started(cfg_file, new)
            return None, None
        path = last
    else:
        path = Path(mode)
        if not path.is_file():
            raise ValueError(f"train.resume={mode!r} is not one of {RESUME_MODES} and no such checkpoint")
        if not fresh_dir:
            if last.exists() and not last.samefile(path):
                raise ValueError(f"train.resume={mode!r}: train.out_dir={str(out_dir)!r} already holds "
                                 f"another run ({last}); continue that one with train.resume=auto, or "
                                 "choose another train.out_dir")
            if not last.exists():
                _check_started(cfg_file, new)

    state = load_checkpoint(path)
    if not isinstance(state.get("config"), dict) or not isinstance(state.get("step"), int):
        raise ValueError(f"checkpoint {str(path)!r} has no run config or step to continue from")
    changes = config_changes(state["config"], new)
    if changes and mode == "auto":
        raise _refuse(out_dir, f"a run (checkpoint {path}, step {state['step']})", changes, can_force=True)
    if changes and warn:
        warnings.warn(f"continuing {path} (step {state['step']}) with a changed config: "
                      + "; ".join(changes), stacklevel=2)
    return path, state


__all__ = ["CONFIG_NAME", "DEFAULT_RUNS_ROOT", "config_inputs", "RESUMABLE_KEYS", "RESUME_MODES", "claim_new_dir",
           "config_changes", "default_out_dir", "plan_resume", "with_default_out_dir"]
