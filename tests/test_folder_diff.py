"""aurl.data.folder_diff: the build's scan finds what rglob finds, in pathlib's order, and an unchanged
rebuild diffs the folder against the manifest's columns without a dict per entry."""

from __future__ import annotations

from test_cache import _build, _folder


def test_scan_finds_what_rglob_finds_in_pathlib_order(tmp_path):
    """The build's scan (one os.scandir walk) against the definition it replaces: rglob's MIDI files, sorted
    as Paths (by parts: "a/z.mid" before "a-b/x.mid", though "-" sorts before "/"), with size and mtime;
    links to files followed, linked folders not entered, ".mid" alone is no suffix."""
    from aurl.data.folder_diff import MIDI_SUFFIXES, scan_midi_stats

    data = tmp_path / "midi"
    for rel in ("a/z.mid", "a-b/x.mid", "a.mid", "B/C/d.MiD", "e.midi", ".mid", "..mid", "f.mid.txt", "g.kar"):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_bytes(b"x" * len(rel))
    (data / "link.mid").symlink_to(data / "a.mid")
    (data / "linked").symlink_to(data / "a", target_is_directory=True)
    want = sorted(p for p in data.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES and p.is_file())
    want = [(p.relative_to(data).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in want]
    assert scan_midi_stats(data) == want
    assert [rel for rel, _, _ in want].index("a/z.mid") < [rel for rel, _, _ in want].index("a-b/x.mid")


def test_unchanged_rebuild_builds_no_dict_per_entry(tmp_path, monkeypatch):
    """At 100,000 files the dicts cost seconds: an unchanged rebuild diffs against the manifest's columns."""
    from aurl.data.manifest import PieceTable

    data, cache = _folder(tmp_path), tmp_path / "cache"
    _build(data, cache)

    def no_rows(*_):
        raise AssertionError("a dict per manifest entry")

    monkeypatch.setattr(PieceTable, "rows", no_rows)
    monkeypatch.setattr(PieceTable, "from_rows", classmethod(no_rows))
    s = _build(data, cache)
    assert (s.tokenized, s.reused, s.pieces) == (0, 6, 6)
