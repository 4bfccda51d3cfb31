"""Shared pytest helpers.

`ensure_debian_packages(packages, commands)`: apt-get install what a test needs (SLURM, FluidSynth, Chromium)
unless it is already there.

`ensure_deepspeed_op(env)`: DeepSpeed's CPU op built (once per machine, in env's TORCH_EXTENSIONS_DIR) before
a test launches DeepSpeed, or unavailable().

`spy_on_the_disk(monkeypatch)`: every os.fsync and os.replace from then on, recorded by the inode it acts on
(the real call is made), for the tests of what reaches the disk before what (atomic writes, checkpoint commits).

`unavailable(reason)`: a component a test needs cannot start (SLURM, munge, the DeepSpeed op build). Under
CI=true (CI sets it) the test fails with the reason, so CI cannot go green without the component; elsewhere
(a laptop without root, say) it is skipped with the reason.

Parallel runs (launch/test.sh: pytest-xdist, `-n 2 --dist loadgroup`): each test module is one xdist group,
so its module- and session-scoped fixtures (reference runs, the SLURM cluster) start once, on one worker;
the config-key modules share one group (their `lab` baseline run). Modules are handed out longest first
(LONGEST_FIRST) so that the workers finish together. apt-get runs one at a time across workers.

Where a test goes (README, Layout; tests/test_layout.py): a unit test in the test module of the aurl module it
tests; a test that uses a feature module's module- or session-scoped fixture stays beside that fixture (in
another module it would start the fixture a second time, in another group).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

_updated = False  # apt-get update runs once per session (per xdist worker)

# Test modules by measured duration (2026-12-01, 2-core machine): the longest first, so that with two
# xdist workers neither is left alone with a long module at the end. Modules not named here follow.
LONGEST_FIRST = ["test_train_pipeline", "test_slurm", "test_deepspeed", "test_vaegan", "test_elastic", "test_bench",
                 "test_tracking", "test_config_keys", "test_gpu_check"]


def _group(item) -> str:
    """The module's name; every test_config_keys* module is one group (they share the session's `lab`)."""
    name = Path(str(item.fspath)).stem
    return "test_config_keys" if name.startswith("test_config_keys") else name


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(_group(item), len(rank)))  # stable: each module keeps its order
    for item in items:
        item.add_marker(pytest.mark.xdist_group(_group(item)))


def spy_on_the_disk(monkeypatch) -> list[tuple[str, int]]:
    """Record each os.fsync ("fsync", inode) and os.replace ("replace", inode of the source), then call the
    real one. Undo with monkeypatch.undo() before reading the files back."""
    events: list[tuple[str, int]] = []
    fsync, replace = os.fsync, os.replace

    def spy_fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        return fsync(fd)

    def spy_replace(src, dst):
        events.append(("replace", os.stat(src).st_ino))
        return replace(src, dst)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    return events


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str):
    """Fail (under CI=true) or skip (elsewhere) the current test, naming why the component is unavailable."""
    if in_ci():
        pytest.fail(f"CI=true, and {reason}", pytrace=False)
    pytest.skip(reason)


DEEPSPEED_OP_BUILD_TIMEOUT_S = 540  # measured: ~40 s on an idle 2-core machine, 7+ min under a load of 20


def ensure_deepspeed_op(env: dict) -> None:
    """DeepSpeed imports and builds its CPU op (its shared-memory allreduce) in env["TORCH_EXTENSIONS_DIR"],
    once per machine (then cached), or the calling test cannot run (unavailable). Built here, before the test's
    own DeepSpeed launch, so the launch is not timed with the build in it, and a build that overruns is
    stopped with its lock removed: a build killed while it holds its lock makes every later one wait on it
    forever (seen: bench/gpu_check.sh's step limit stopped a build, and the next run hung)."""
    code = ("from deepspeed.comm.torch import build_shm_op\n"
            "build_shm_op()  # None: not needed on this machine; an exception: it cannot be built")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=DEEPSPEED_OP_BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # the compiler too (its own process group), and the lock it held
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        (Path(env["TORCH_EXTENSIONS_DIR"]) / "deepspeed_shm_comm" / "lock").unlink(missing_ok=True)
        unavailable(f"the DeepSpeed op build took more than {DEEPSPEED_OP_BUILD_TIMEOUT_S} s")
    if proc.returncode != 0:
        tail = " | ".join(err.strip().splitlines()[-3:])
        unavailable(f"DeepSpeed cannot start: importing it or building its CPU op failed ({tail})")


def ensure_debian_packages(packages: list[str], commands: list[str]) -> None:
    """apt-get install `packages` unless every command in `commands` is on PATH (CI starts from a bare Debian
    12 as root). Without root apt-get: unavailable(), i.e. failed under CI=true, skipped elsewhere."""
    global _updated
    if all(shutil.which(c) for c in commands):
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        unavailable(f"{', '.join(commands)} not installed and no root apt-get to install {' '.join(packages)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmds = [] if _updated else [["apt-get", "update", "-qq"]]
    cmds.append(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages])
    t0 = time.time()
    with open("/tmp/aurl-tests-apt.lock", "w") as lock:  # another xdist worker's apt-get holds dpkg's lock
        fcntl.flock(lock, fcntl.LOCK_EX)
        for cmd in cmds:
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            if r.returncode != 0:
                pytest.fail(f"{' '.join(cmd)} failed (rc {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    _updated = True
    print(f"installed {' '.join(packages)} in {time.time() - t0:.0f} s")


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """The config-key probes' real runs of the tiny stage 1 (tests/config_probes.py), shared by every
    test_config_keys_<section>.py so that a run they all compare with (the baseline) runs once."""
    from config_probes import Lab

    return Lab(tmp_path_factory.mktemp("config_keys"))
