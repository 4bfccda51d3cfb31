"""Stopping early on request: SIGUSR1/SIGTERM or a deadline (SLURM_JOB_END_TIME - margin).

The signal handler only sets a flag. At each optimizer-step boundary every rank calls `should_stop()`,
which all-reduces the flag (max) so all ranks agree on the same step; then the loop saves, commits and
exits with STOPPED_EXIT.
"""

from __future__ import annotations

import os
import signal
import time

import torch

STOPPED_EXIT = 75  # EX_TEMPFAIL: stopped early with a committed checkpoint; run again to resume


class StopFlag:
    def __init__(self, margin_s: float = 0.0):
        self.requested: str | None = None
        end = os.environ.get("SLURM_JOB_END_TIME", "")
        self.deadline = float(end) - margin_s if end.strip().isdigit() else None
        self._previous = {}

    def install(self) -> StopFlag:
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:  # only set a flag: no I/O, no collectives here
        self.requested = signal.Signals(signum).name

    def local(self) -> bool:
        if self.requested is None and self.deadline is not None and time.time() >= self.deadline:
            self.requested = "deadline"
        return self.requested is not None

    def should_stop(self, accelerator) -> bool:
        """True on every rank when any rank was asked to stop (a collective: call it on all ranks)."""
        flag = self.local()
        if accelerator.num_processes == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
        return bool(accelerator.reduce(t, reduction="sum").item() > 0)
