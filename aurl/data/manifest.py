"""The cache manifest on disk: a compact JSON snapshot plus an append-only journal, so that a build writes
what it adds, not the whole list again.

    manifest.json      {"format", "vocab_hash", "vocab_spec", "options", "id", "pieces": {"columns": {...}},
                       "skipped": {"columns": {...}}}: entries by column (PieceTable)
    manifest.journal   JSON lines over that snapshot: {"base": id} first, then {"entry": {...}} (a piece, or a
                       skipped file when it has a "reason") and {"remove": path}, applied in order

Why: a 100,000-file corpus has a ~40 MB manifest. Rewriting it at every flush of a build (every few seconds)
made the build quadratic in the corpus; appending the flushed entries costs what they weigh. A build that
adds many entries rewrites the snapshot once at its end (compaction); one that changes a few files leaves
them in the journal, and a build that changes nothing writes nothing at all.
A journal whose "base" is not the snapshot's id (a compaction that was cut between its two steps) is stale
and ignored; a torn last line (kill -9 during an append) is ignored too: the build that wrote it had not
finished that flush, and the next build redoes that file.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

from aurl.atomic import atomic_write_bytes

MANIFEST = "manifest.json"
JOURNAL = "manifest.journal"
COMPACT_SHARE = 8  # compact at the end of a build when the journal holds over 1/8 as many entries as the snapshot


def _dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


class PieceTable:
    """Entries stored by column ({key: [value per entry]}, a nested dict's keys as "key.sub"): parsing
    columns is ~3x faster than as many small dicts, and the loader reads the few columns it needs without
    building 100,000 dicts. None in a column means "this entry has no such key"."""

    def __init__(self, columns: dict[str, list]):
        self.columns = columns

    @classmethod
    def from_rows(cls, rows: list[dict]) -> PieceTable:
        keys: dict[str, None] = {}
        flat = []
        for r in rows:
            f = {}
            for k, v in r.items():
                if isinstance(v, dict):
                    f.update({f"{k}.{sub}": x for sub, x in v.items()})
                else:
                    f[k] = v
            keys.update(dict.fromkeys(f))
            flat.append(f)
        return cls({k: [f.get(k) for f in flat] for k in keys})

    def __len__(self) -> int:
        return len(self.columns["path"]) if self.columns else 0

    def rows(self) -> list[dict]:
        cols, flat, nested = self.columns, [], {}
        for k in cols:
            top, dot, sub = k.partition(".")
            nested.setdefault(top, []).append((sub, k)) if dot else flat.append(k)
        out = [dict(zip(flat, values, strict=True)) for values in zip(*(cols[k] for k in flat), strict=True)]
        for top, subs in nested.items():
            names = [sub for sub, _ in subs]
            for row, values in zip(out, zip(*(cols[k] for _, k in subs), strict=True), strict=True):
                row[top] = dict(zip(names, values, strict=True))
        if any(None in c for c in cols.values()):  # entries without some key (rare): drop the placeholders
            for row in out:
                for k in [k for k, v in row.items() if v is None]:
                    del row[k]
                for top in nested:
                    if top in row and all(v is None for v in row[top].values()):
                        del row[top]
                    elif top in row:
                        row[top] = {k: v for k, v in row[top].items() if v is not None}
        return out

    def select(self, keep: list[int]) -> PieceTable:
        return PieceTable({k: [c[i] for i in keep] for k, c in self.columns.items()})

    def concat(self, other: PieceTable) -> PieceTable:
        n, m = len(self), len(other)
        keys = list(dict.fromkeys([*self.columns, *other.columns]))
        return PieceTable({k: self.columns.get(k, [None] * n) + other.columns.get(k, [None] * m) for k in keys})

    def sorted_by_path(self) -> PieceTable:
        paths = self.columns.get("path", [])
        return self.select(sorted(range(len(paths)), key=paths.__getitem__))


def load(cache_dir: Path, tables: bool = False) -> dict | None:
    """The manifest (snapshot with its journal applied; pieces and skipped sorted by path), None if absent.
    pieces and skipped are lists of dicts, or PieceTables when `tables` is set (the journal is applied to
    the columns: a few changed entries cost what they weigh, not a dict per piece)."""
    try:
        snap = json.loads((Path(cache_dir) / MANIFEST).read_bytes())
    except (OSError, ValueError):
        return None
    for key in ("pieces", "skipped"):  # a snapshot of format 1 holds lists of dicts
        snap[key] = PieceTable(snap[key]["columns"]) if isinstance(snap[key], dict) else PieceTable.from_rows(snap[key])
    ops = _journal_ops(Path(cache_dir) / JOURNAL, snap.get("id"))
    snap["journal_entries"] = ops.pop(None, 0)
    if ops:
        added = [e for e in ops.values() if e is not None]
        for key, new in (("pieces", [e for e in added if "reason" not in e]), ("skipped", [e for e in added if "reason" in e])):
            table = snap[key]
            kept = table.select([i for i, p in enumerate(table.columns.get("path", [])) if p not in ops])
            snap[key] = kept.concat(PieceTable.from_rows(new)).sorted_by_path() if new else kept
    if not tables:
        snap["pieces"], snap["skipped"] = snap["pieces"].rows(), snap["skipped"].rows()
    return snap


def _journal_ops(journal: Path, snapshot_id: str | None) -> dict:
    """{path: its last entry, or None when removed} from a journal over this snapshot ({None: lines read});
    empty when there is none that applies."""
    try:
        lines = journal.read_bytes().splitlines()
    except OSError:
        return {}
    if not lines or snapshot_id is None:
        return {}
    try:
        if json.loads(lines[0]).get("base") != snapshot_id:
            return {}  # stale: written against an earlier snapshot
    except ValueError:
        return {}
    ops: dict = {}
    for line in lines[1:]:
        try:
            op = json.loads(line)
        except ValueError:
            continue  # a torn line (kill -9 inside an append): that flush never completed, its files are redone
        if "remove" in op:
            ops[op["remove"]] = None
        else:
            ops[op["entry"]["path"]] = op["entry"]
    ops[None] = len(lines) - 1
    return ops


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


class ManifestWriter:
    """Writes one build's changes: a whole snapshot (first build, other options) or journal lines."""

    def __init__(self, cache_dir: Path, header: dict, old: dict | None):
        self.cache_dir = Path(cache_dir)
        self.header = header
        same = old is not None and old.get("id") is not None and all(old.get(k) == v for k, v in header.items())
        self.base_id = old["id"] if same else None  # None: the next write is a whole snapshot
        self.snapshot_entries = len(old["pieces"]) + len(old["skipped"]) if same else 0
        self.journal_entries = old.get("journal_entries", 0) if same else 0
        self._journal = None

    @property
    def rewrites(self) -> bool:
        """True when the next write must be a whole snapshot (no snapshot of these options yet)."""
        return self.base_id is None

    def write_snapshot(self, pieces: PieceTable, skipped: PieceTable) -> None:
        """The whole manifest (entries sorted by path), atomically; the journal it replaces becomes stale, then
        goes."""
        self.close()
        self.base_id = uuid.uuid4().hex
        body = {**self.header, "id": self.base_id,
                "pieces": {"columns": pieces.sorted_by_path().columns},
                "skipped": {"columns": skipped.sorted_by_path().columns}}
        atomic_write_bytes(self.cache_dir / MANIFEST, (_dumps(body) + "\n").encode())
        (self.cache_dir / JOURNAL).unlink(missing_ok=True)
        self.snapshot_entries, self.journal_entries = len(pieces) + len(skipped), 0

    def append(self, entries: list[dict], removed: list[str] = ()) -> None:
        """Journal lines for removed paths and new or changed entries, flushed to disk before returning."""
        assert self.base_id is not None, "a snapshot comes first"
        if not entries and not removed:
            return
        if self._journal is None:
            path = self.cache_dir / JOURNAL
            fresh = self.journal_entries == 0 or not path.exists()
            self._journal = open(path, "w" if fresh else "a", encoding="utf-8")  # noqa: SIM115 - kept for the build
            if fresh:
                self._journal.write(_dumps({"base": self.base_id}) + "\n")
            elif not _ends_with_newline(path):
                self._journal.write("\n")  # end a torn line, so that it stays one unreadable line
        ops = [_dumps({"remove": r}) for r in removed] + [_dumps({"entry": e}) for e in entries]
        self._journal.write("\n".join(ops) + "\n")
        self._journal.flush()
        os.fsync(self._journal.fileno())
        self.journal_entries += len(ops)

    def wants_compaction(self) -> bool:
        return self.journal_entries > self.snapshot_entries // COMPACT_SHARE

    def close(self) -> None:
        if self._journal is not None:
            self._journal.close()
            self._journal = None
