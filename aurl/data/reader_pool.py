"""Reading and tokenizing MIDI files for a cache build, each file in a worker process with a timeout.

Why worker processes: a MIDI reader can crash (even segfault) or hang on a bad file. Each worker reads one file
per message; one that dies or runs past the timeout is killed and replaced, and its file is skipped with the
reason, so a bad file costs only itself. Workers are spawned (no fork: the parent may hold torch threads) and
die with the build process (Linux: PR_SET_PDEATHSIG), so a hung reader is never left behind. With workers=0
the files are read in the calling process, without that isolation.

Each result is (sha256 of the file or None, ("ok", tokens, kept notes, duration_s, EncodeStats as a dict) or
("skip", reason)).
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import signal
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict
from multiprocessing.connection import wait as mp_wait
from pathlib import Path

from aurl import codec
from aurl.data.midi_io import MidiReadError


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_or_empty(path: Path) -> str:
    """The hash of a file whose reader died before hashing it ("" when it cannot be read at all)."""
    try:
        return sha256_file(path)
    except OSError:
        return ""


def read_files(paths: list[str], reader, max_seconds: float, workers: int | None, timeout_s: float) -> Iterator:
    """Yield (path, (sha256 or None, result)) for each path, in the order they finish.

    workers: reader processes (None: all cores; 0: in this process, without crash isolation or timeout)."""
    n_workers = (os.cpu_count() or 1) if workers is None else workers
    if n_workers == 0:
        return ((p, _hash_and_tokenize(p, reader, max_seconds)) for p in paths)
    return _run_isolated(paths, reader, max_seconds, n_workers, timeout_s)


# ----------------------------------------------------------------------------------------------------------
# Worker side (runs in a child process; also in-process when workers=0)
def _tokenize_file(path: str, reader, max_seconds: float) -> tuple:
    try:
        score = reader(path, max_seconds)
    except MidiReadError as e:
        return ("skip", str(e))
    except (OSError, ValueError, RuntimeError, IndexError, KeyError, EOFError) as e:
        return ("skip", f"reader error ({type(e).__name__}: {str(e)[:120]})")
    st = codec.EncodeStats()
    tokens = codec.encode(score, st)
    if st.kept == 0:
        return ("skip", f"no usable notes ({st.out_of_range} out of range)")
    return ("ok", tokens, st.kept, score.duration, asdict(st))


def _hash_and_tokenize(path: str, reader, max_seconds: float) -> tuple[str | None, tuple]:
    """(sha256 of the file, _tokenize_file's result): a new file is hashed here, in the worker, not in the
    build process, which would otherwise spend as long hashing as a few workers spend tokenizing."""
    try:
        digest = sha256_file(Path(path))
    except OSError:
        digest = None
    return digest, _tokenize_file(path, reader, max_seconds)


def _die_with_parent() -> None:
    """Linux: have the kernel kill this worker when the build process dies (even by kill -9), so a
    hung reader is never left behind. Best effort elsewhere."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _worker_main(conn, reader, max_seconds: float) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business: it flushes and stops us
    while True:
        try:
            path = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        if path is None:
            return
        conn.send(_hash_and_tokenize(path, reader, max_seconds))


class _Worker:
    def __init__(self, ctx, reader, max_seconds: float):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, reader, max_seconds), daemon=True)
        self.proc.start()
        child.close()
        self.task: str | None = None
        self.since = 0.0

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            try:
                self.conn.send(None)
            except OSError:
                pass
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def _run_isolated(tasks: list[str], reader, max_seconds: float, workers: int, timeout_s: float):
    """Yield (task, (sha256 or None, result)) for each task, each read in a worker process with a timeout."""
    ctx = mp.get_context("spawn")  # no fork: the parent may hold torch threads
    pool = [_Worker(ctx, reader, max_seconds) for _ in range(min(workers, len(tasks)))]
    queue = deque(tasks)
    try:
        while queue or any(w.task for w in pool):
            for w in pool:
                if w.task is None and queue:
                    w.task, w.since = queue.popleft(), time.monotonic()
                    w.conn.send(w.task)
            busy = [w for w in pool if w.task]
            mp_wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=0.5)
            for i, w in enumerate(pool):
                if w.task is None:
                    continue
                result = None
                if w.conn.poll():
                    try:
                        result = w.conn.recv()
                    except (EOFError, OSError):
                        result = None
                if result is not None:
                    task, w.task = w.task, None
                    yield task, result
                    continue
                dead = not w.proc.is_alive()
                late = time.monotonic() - w.since > timeout_s
                if dead or late:
                    task = w.task
                    code = w.proc.exitcode
                    w.stop(kill=True)
                    pool[i] = _Worker(ctx, reader, max_seconds)
                    why = f"reader crashed (exit code {code})" if dead else f"reader timed out after {timeout_s:g} s"
                    yield task, (None, ("skip", why))
    finally:
        for w in pool:
            w.stop(kill=w.task is not None)
