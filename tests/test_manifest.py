"""aurl.data.manifest: the snapshot plus its journal read back as the entries the build wrote. A changed
entry replaces the old, a removed one goes, a skipped file (it has a "reason") lands among the skipped; a
torn last line and a journal over another snapshot are ignored. PieceTable's columns give back the rows,
nested keys and missing keys included. (Builds that are killed and continued: test_cache.py.)"""

from __future__ import annotations

import json

from aurl.data import manifest
from aurl.data.manifest import JOURNAL, ManifestWriter, PieceTable, load

HEADER = {"format": 2, "vocab_hash": "abc"}


def _piece(path: str, length: int, **more) -> dict:
    return {"path": path, "length": length, "stats": {"kept": length // 2, "drums": 0}, **more}


def test_the_journal_applies_over_its_snapshot_only(tmp_path):
    """Mutations: the journal's "base" not compared with the snapshot's id (a stale journal applied) -> fails;
    append not ending a torn last line first (the next entry joins it, unreadable) -> fails; the writer
    appending over a snapshot of other options (header not compared) -> fails."""
    writer = ManifestWriter(tmp_path, HEADER, None)
    assert writer.rewrites
    writer.write_snapshot(PieceTable.from_rows([_piece("b.mid", 20), _piece("a.mid", 10), _piece("c.mid", 30)]),
                          PieceTable.from_rows([]))
    old = load(tmp_path)
    assert [p["path"] for p in old["pieces"]] == ["a.mid", "b.mid", "c.mid"] and old["journal_entries"] == 0
    writer = ManifestWriter(tmp_path, HEADER, old)
    assert not writer.rewrites
    writer.append([_piece("b.mid", 22), _piece("d.mid", 40), {"path": "e.mid", "reason": "no notes"}],
                  removed=["c.mid"])
    writer.close()
    with open(tmp_path / JOURNAL, "a") as f:
        f.write('{"entry": {"path": "f.mid", "len')  # kill -9 inside an append
    got = load(tmp_path)
    assert got["pieces"] == [_piece("a.mid", 10), _piece("b.mid", 22), _piece("d.mid", 40)]
    assert got["skipped"] == [{"path": "e.mid", "reason": "no notes"}] and got["journal_entries"] == 5
    tables = load(tmp_path, tables=True)
    assert tables["pieces"].columns["length"] == [10, 22, 40] and tables["pieces"].columns["stats.kept"] == [5, 11, 20]
    writer = ManifestWriter(tmp_path, HEADER, got)  # the next build ends the torn line before its own entries
    writer.append([_piece("g.mid", 8)])
    writer.close()
    assert [p["path"] for p in load(tmp_path)["pieces"]] == ["a.mid", "b.mid", "d.mid", "g.mid"]
    assert ManifestWriter(tmp_path, {**HEADER, "vocab_hash": "def"}, got).rewrites  # another vocabulary
    lines = (tmp_path / JOURNAL).read_text().splitlines()
    (tmp_path / JOURNAL).write_text("\n".join([json.dumps({"base": "an-earlier-snapshot"}), *lines[1:]]) + "\n")
    assert load(tmp_path)["pieces"] == old["pieces"]  # stale: the snapshot alone
    assert load(tmp_path / "nothing") is None


def test_columns_give_back_the_rows():
    rows = [_piece("a.mid", 10), {"path": "b.mid", "length": 4}, _piece("c.mid", 6, split="val")]
    table = PieceTable.from_rows(rows)
    assert sorted(table.columns) == ["length", "path", "split", "stats.drums", "stats.kept"]
    assert table.rows() == rows and len(table) == 3
    assert table.select([2, 0]).rows() == [rows[2], rows[0]]
    assert table.concat(PieceTable.from_rows([{"path": "0.mid", "length": 1}])).sorted_by_path().rows() == [
        {"path": "0.mid", "length": 1}, *rows]
    assert manifest.COMPACT_SHARE > 1
