"""aurl.train.preemption: a stop request is a flag (signal or SLURM deadline), agreed at step boundaries."""

from __future__ import annotations

import os
import signal

from aurl.train.preemption import StopFlag


def test_stop_flag_only_sets_a_flag_and_honours_deadline(monkeypatch):
    flag = StopFlag().install()
    try:
        assert not flag.local()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert flag.local() and flag.requested == "SIGUSR1"
    finally:
        flag.uninstall()
    monkeypatch.setenv("SLURM_JOB_END_TIME", "1000")  # long past
    assert StopFlag(margin_s=10).local()


def test_uninstall_restores_the_previous_handlers():
    """A stage's flag leaves SIGTERM/SIGUSR1 as it found them (the next stage installs its own)."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGTERM)}
    flag = StopFlag().install()
    assert all(signal.getsignal(sig) != h for sig, h in before.items())
    flag.uninstall()
    assert {sig: signal.getsignal(sig) for sig in before} == before
    assert len(before) == 2
