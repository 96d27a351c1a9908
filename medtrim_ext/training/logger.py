"""Training logs: a CSV of scalars per logged step, and TensorBoard when it is installed."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import warnings
from pathlib import Path

from ..utils.io import OutputWriteError, atomic_write


class RunLogger:
    """Writes ``metrics.csv`` (one row per logged step) and TensorBoard scalars under ``tb/``.

    On resume from step ``s`` the rows after ``s`` (logged after the last checkpoint, before a
    crash) are dropped so the CSV never holds a step twice; TensorBoard purges them the same way.
    Only the main process logs (``enabled``).
    """

    def __init__(self, out_dir: str | Path, *, enabled: bool = True, tensorboard: bool = True,
                 resume_step: int = 0):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.csv"
        self._fields: list[str] | None = None
        self._tb = None
        if not enabled:
            return
        self._truncate(resume_step)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional at run time (e.g. a bare GPU image)
                warnings.warn("tensorboard is not installed: logging to metrics.csv only")
            else:
                self._tb = SummaryWriter(str(Path(out_dir) / "tb"), purge_step=resume_step or None)

    def _read(self) -> tuple[list[str], list[dict], list[int]]:
        """Header, rows and their steps of the existing CSV. A last row cut short (the process
        was killed while appending it; its step is after the last checkpoint) is dropped; any
        other damage is a ``ValueError`` naming the file and line."""
        def bad(why: str) -> ValueError:
            return ValueError(f"training log {str(self.path)!r} is damaged: {why}; move it away (a "
                              f"new log starts) or repair it")
        try:
            with open(self.path, newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                rows = list(reader)
                fields = list(reader.fieldnames or [])
        except (UnicodeDecodeError, csv.Error) as exc:
            raise bad(f"not a CSV text file ({exc})") from None
        except OSError as exc:
            raise ValueError(f"cannot read training log {str(self.path)!r}: {exc}") from None
        if "step" not in fields:
            raise bad(f"no 'step' column (header: {fields})")
        if rows and any(v is None for v in rows[-1].values()):
            rows.pop()   # torn by a kill mid-append
        steps = []
        for lineno, row in enumerate(rows, 2):
            if None in row or any(v is None for v in row.values()):
                raise bad(f"line {lineno} has {'more' if None in row else 'fewer'} values than "
                          f"the header's {len(fields)}")
            try:
                step = float(row["step"])
            except ValueError:
                step = float("nan")
            if not step.is_integer():
                raise bad(f"line {lineno}: step {row['step']!r} is not a whole number")
            steps.append(int(step))
        return fields, rows, steps

    def _truncate(self, resume_step: int) -> None:
        if not self.path.exists():
            return
        if not resume_step:   # a new run: the old log goes, whatever state it is in
            self.path.unlink()
            return
        fields, rows, steps = self._read()
        keep = [r for r, s in zip(rows, steps) if s <= resume_step]
        if not keep:
            self.path.unlink()
            return
        self._write(fields, keep)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **scalars}
        if self._fields is None:
            self._fields = list(row)
        extra = [k for k in row if k not in self._fields]
        if extra:  # a column appeared (e.g. an evaluation metric): rewrite with the wider header
            self._rewrite_with(self._fields + extra)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new_file = not self.path.exists()
        size = 0 if new_file else self.path.stat().st_size
        try:
            with open(self.path, "a", newline="") as f:
                w = csv.DictWriter(f, fieldnames=self._fields)
                if new_file:
                    w.writeheader()
                w.writerow(row)
        except OSError as exc:   # a full disk: named, and no torn row left for the next reader
            with contextlib.suppress(OSError):
                if new_file:   # an empty file would be taken for one with its header
                    self.path.unlink()
                else:
                    os.truncate(self.path, size)
            raise OutputWriteError(self.path, exc, existed=not new_file) from None
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, step)

    def _rewrite_with(self, fields: list[str]) -> None:
        rows = self._read()[1] if self.path.exists() else []
        self._write(fields, rows)

    def _write(self, fields: list[str], rows: list[dict]) -> None:
        """Replace the CSV with ``rows`` under header ``fields``, atomically."""
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
        with atomic_write(self.path, newline="") as f:
            f.write(buf.getvalue())
        self._fields = fields

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
