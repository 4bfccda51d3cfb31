"""aurl.data.corpus: the bundled Bach chorales converted to MIDI once, resumably, in a stable order."""

from __future__ import annotations

import os

from aurl.data.corpus import bach_chorale_sources, default_corpus_dir, ensure_bach_midi
from aurl.data.midi_io import read_midi


def test_sources_are_sorted_and_distinct():
    sources = bach_chorale_sources()
    names = [n for n, _ in sources]
    assert len(names) > 300 and names == sorted(set(names))


def test_conversion_writes_readable_midi_and_resumes(tmp_path):
    """Two chorales in this process: real MIDI with notes; a second call converts nothing (files untouched),
    and a deleted file is converted again."""
    out = ensure_bach_midi(tmp_path / "bach", limit=2, workers=0, progress=False)
    files = sorted(out.glob("*.mid"))
    assert [f.stem for f in files] == [n for n, _ in bach_chorale_sources()[:2]]
    assert all(read_midi(f).num_notes > 50 for f in files)
    stamps = {f: f.stat().st_mtime_ns for f in files}
    ensure_bach_midi(out, limit=2, workers=0, progress=False)
    assert {f: f.stat().st_mtime_ns for f in files} == stamps
    files[0].unlink()
    ensure_bach_midi(out, limit=2, workers=0, progress=False)
    assert files[0].is_file() and files[1].stat().st_mtime_ns == stamps[files[1]]
    assert not list(out.glob("*.part"))  # no temporary left behind


def test_corpus_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("AURL_CORPUS_DIR", str(tmp_path / "here"))
    assert default_corpus_dir() == tmp_path / "here"
    monkeypatch.delenv("AURL_CORPUS_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_corpus_dir() == tmp_path / "xdg" / "aurl" / "bach_chorales"
    assert os.environ["XDG_CACHE_HOME"] == str(tmp_path / "xdg")
