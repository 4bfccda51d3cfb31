"""aurl.data.reader_pool: each file is read in an isolated worker process, so a reader that crashes or hangs
costs that file only (skipped with the reason), never the build."""

from __future__ import annotations

import signal

from midi_factory import crashing_reader, write_simple_midi
from test_cache import _folder

from aurl.data.cache import build


def test_reader_crash_and_hang_cost_only_that_file(tmp_path):
    data = _folder(tmp_path, n=3)
    write_simple_midi(data / "crash.mid", seed=5)
    write_simple_midi(data / "hang.mid", seed=6)
    s = build(data, tmp_path / "cache", workers=2, timeout_s=3, progress=False, reader=crashing_reader)
    reasons = dict(s.skipped)
    assert s.pieces == 3
    assert "reader crashed" in reasons["crash.mid"] and str(-signal.SIGSEGV) in reasons["crash.mid"]
    assert "timed out after 3 s" in reasons["hang.mid"]
