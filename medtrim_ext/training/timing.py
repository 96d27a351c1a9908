"""Where the time of a training step goes: data, encoders, mining, loss, backward, optimizer."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict

import torch

PHASES = ("data", "encoders_forward", "mining", "loss_forward", "loss_backward",
          "encoders_backward", "optimizer")


class StepTimer:
    """Accumulates wall time per phase, skipping the first ``warmup`` steps (allocator, compile).

    With ``sync`` the device is synchronised at the end of each phase so that asynchronous CUDA
    work is charged to the phase that queued it (a small cost, worth it for a truthful breakdown).
    """

    def __init__(self, device: torch.device, sync: bool = True, warmup: int = 3):
        self.sync = sync and device.type == "cuda"
        self.device = device
        self.warmup = warmup
        self.totals: dict[str, float] = defaultdict(float)
        self.steps = 0
        self._seen = 0
        self._current: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize(self.device)
            self._current[name] += time.perf_counter() - start

    def end_step(self) -> dict[str, float]:
        """Close a step; returns its phase times (seconds)."""
        step, self._current = dict(self._current), defaultdict(float)
        self._seen += 1
        if self._seen > self.warmup:
            for k, v in step.items():
                self.totals[k] += v
            self.steps += 1
        return step

    def mean(self) -> dict[str, float]:
        """Mean seconds per step for each phase, plus ``total``; empty before any counted step."""
        if not self.steps:
            return {}
        out = {k: self.totals.get(k, 0.0) / self.steps for k in PHASES if k in self.totals}
        out["total"] = sum(out.values())
        return out
