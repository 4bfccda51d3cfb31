"""aurl.data.reader_pool: each file is read in an isolated worker process, so a reader that crashes or hangs
costs that file only (skipped with the reason), never the build."""

from __future__ import annotations

import signal
from pathlib import Path

from midi_factory import crashing_reader, write_simple_midi
from test_cache import _folder

from aurl.data.cache import build
from aurl.data.reader_pool import read_files


def test_reader_crash_and_hang_cost_only_that_file(tmp_path):
    data = _folder(tmp_path, n=3)
    write_simple_midi(data / "crash.mid", seed=5)
    write_simple_midi(data / "hang.mid", seed=6)
    s = build(data, tmp_path / "cache", workers=2, timeout_s=3, progress=False, reader=crashing_reader)
    reasons = dict(s.skipped)
    assert s.pieces == 3
    assert "reader crashed" in reasons["crash.mid"] and str(-signal.SIGSEGV) in reasons["crash.mid"]
    assert "timed out after 3 s" in reasons["hang.mid"]


def failing_reader(path, max_seconds=None):
    """A reader that fails the way parsers of damaged files do: the exception is named by the file's stem."""
    import builtins

    from aurl.data.midi_io import read_midi

    stem = Path(path).stem
    if stem in ("IndexError", "KeyError", "EOFError", "RuntimeError"):
        raise getattr(builtins, stem)(f"damaged {stem}")
    return read_midi(path)


def test_a_reader_exception_skips_the_file_with_its_name_in_process_and_in_a_worker(tmp_path):
    """IndexError, KeyError, EOFError, RuntimeError from a reader skip that file, naming the exception: in this
    process (workers=0, where an uncaught one would end the build) and in a worker (where it would kill it,
    leaving only 'reader crashed (exit code 1)')."""
    names = ["IndexError", "KeyError", "EOFError", "RuntimeError"]
    paths = [str(write_simple_midi(tmp_path / f"{n}.mid", seed=i)) for i, n in enumerate(names)]
    paths.append(str(write_simple_midi(tmp_path / "good.mid", seed=9)))
    for workers in (0, 1):
        results = dict(read_files(paths, failing_reader, 60.0, workers, timeout_s=60))
        assert len(results) == 5
        for name, path in zip(names, paths, strict=False):
            digest, result = results[path]
            assert result[0] == "skip" and result[1].startswith(f"reader error ({name}: "), (workers, result)
            assert digest is not None
        assert results[paths[-1]][1][0] == "ok"


def test_stopping_early_kills_a_busy_worker_at_once(tmp_path):
    """A build stopped while a worker hangs (Ctrl-C, an error downstream) kills that worker at once rather than
    asking it to stop and waiting 5 s for an answer that never comes. Measured: about 0.1 s; we allow 3 s."""
    import time

    hang = write_simple_midi(tmp_path / "hang.mid", seed=1)
    good = write_simple_midi(tmp_path / "good.mid", seed=2)
    results = read_files([str(hang), str(good)], crashing_reader, 60.0, 2, timeout_s=600)
    path, (_, result) = next(results)
    assert path == str(good) and result[0] == "ok"
    deadline = time.monotonic() + 60
    while not hang.with_suffix(".hanging").exists():  # the other worker is inside the hanging reader
        assert time.monotonic() < deadline
        time.sleep(0.05)
    t0 = time.monotonic()
    results.close()
    assert time.monotonic() - t0 < 3.0


def test_a_hung_reader_is_given_up_on_after_the_timeout(tmp_path):
    """A hung reader is given up on after timeout_s (2 s here), counted from when its file was sent: from when
    the worker is inside the hanging reader (its marker file) to the skip, measured 1.8 s (three runs; the
    clock starts a little before the worker reads the file, and the pool polls every 0.5 s); we allow 4.5 s.
    A pool that waited three times as long would take about 6 s."""
    import time

    hang = write_simple_midi(tmp_path / "hang.mid", seed=1)
    results = read_files([str(hang)], crashing_reader, 60.0, 1, timeout_s=2)
    t0 = None

    def when_inside():
        nonlocal t0
        while t0 is None:
            if hang.with_suffix(".hanging").exists():
                t0 = time.monotonic()
            time.sleep(0.02)

    import threading

    watcher = threading.Thread(target=when_inside, daemon=True)
    watcher.start()
    path, (_, result) = next(results)
    elapsed = time.monotonic() - t0
    assert path == str(hang) and result == ("skip", "reader timed out after 2 s")
    assert elapsed < 4.5, elapsed
    results.close()
