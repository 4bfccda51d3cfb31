"""aurl.data.corpus: the bundled Bach chorales converted to MIDI once, resumably, in a stable order."""

from __future__ import annotations

import os

from aurl.data.corpus import _convert_one, bach_chorale_sources, default_corpus_dir, ensure_bach_midi
from aurl.data.midi_io import read_midi


def test_sources_are_sorted_and_distinct():
    sources = bach_chorale_sources()
    names = [n for n, _ in sources]
    assert len(names) > 300 and names == sorted(set(names))
    # music21 ships most chorales as .mxl and a few as plain MusicXML (bwv69.6 in 9.x): both are read
    assert {p.suffix for _, p in sources} == {".mxl", ".xml"}


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
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    home_default = tmp_path / "home" / ".cache" / "aurl" / "bach_chorales"  # the XDG default, ~/.cache
    monkeypatch.setenv("XDG_CACHE_HOME", "")  # empty counts as unset (XDG base directory spec)
    assert default_corpus_dir() == home_default
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_corpus_dir() == home_default


def test_a_chorale_that_fails_to_convert_is_named_and_the_others_are_written(tmp_path, capsys):
    """A conversion that fails (here: its temporary file's path is taken by a folder, so music21 cannot write
    it) skips that chorale with a one-line warning naming it and why; the next chorale is converted, nothing
    is raised, no partial file is left."""
    out = tmp_path / "bach"
    first, second = [name for name, _ in bach_chorale_sources()[:2]]
    (out / f"{first}.mid.{os.getpid()}.part").mkdir(parents=True)  # workers=0: converted in this process
    ensure_bach_midi(out, limit=2, workers=0, progress=False)
    assert not (out / f"{first}.mid").exists() and read_midi(out / f"{second}.mid").num_notes > 50
    warnings = [line for line in capsys.readouterr().err.splitlines() if "could not convert" in line]
    assert len(warnings) == 1 and f"bach corpus: could not convert {first}.mid: " in warnings[0]
    assert "Error" in warnings[0]  # the exception's type


def test_convert_one_reports_an_unreadable_source_instead_of_raising(tmp_path):
    junk = tmp_path / "junk.mxl"
    junk.write_bytes(b"not music")
    err = _convert_one(str(junk), str(tmp_path / "junk.mid"))
    assert err and ": " in err and not list(tmp_path.glob("junk.mid*"))
