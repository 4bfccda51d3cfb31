"""The token cache: flat int16 token shards (numpy memmap) plus a JSON manifest, built incrementally.

Layout of a cache folder:

    manifest.json        vocab hash + spec, build options, one entry per piece and per skipped file
    manifest.journal     entries added since manifest.json was written whole (aurl/data/manifest.py)
    shards/NNNNNN.bin    raw int16 tokens of many pieces back to back (a piece = offset + length in a shard)
    .lock                held while a build runs (several ranks calling ensure_cache wait for the first)

How a build works, and why:
- Files (recursive, .mid/.midi in any case) whose size and mtime match the manifest are not touched; any
  other file is hashed (sha256), and one whose content is unchanged is kept as is. Only new or changed
  files are tokenized; a file gone from the folder leaves the manifest (its shard bytes are reclaimed once
  no piece uses the shard).
- Files are read and tokenized in worker processes, one file per message, each with a timeout: a reader
  crash (even a segfault) or hang costs only that file, which is skipped with the reason; the worker is
  replaced. Skipped files are kept in the manifest with their reason (and are not retried until changed).
- Results are flushed every few seconds: the new shard is written atomically first, then the entries it
  holds are appended to the manifest's journal (fsynced); the manifest is written whole only by the first
  build (or one with other options) and once at the end of a build that added many entries, and not at all
  by a build that changed nothing. An interrupted build (Ctrl-C, kill -9) therefore loses at most the last
  few seconds of work, never anything the manifest already lists; the next build goes on from there.
- A folder without one usable file is refused (NoUsableFile, a UserError naming the folder and the number of
  skipped files) and leaves no cache: the folders this build created are removed again, and an existing cache
  (of other data) is left exactly as it was (no manifest is written while there is no piece to list).
- The train/validation split is by piece: a piece is in validation when a hash of (seed, relative path)
  falls below val_fraction, so adding files never moves the others between splits.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import signal
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import wait as mp_wait
from pathlib import Path

import numpy as np

from aurl import vocab
from aurl.atomic import atomic_write_bytes
from aurl.console import UserError, check_writable_folder, one_line
from aurl.data import manifest as manifest_io
from aurl.data.midi_io import MAX_SECONDS, MidiReadError, read_midi

MANIFEST = manifest_io.MANIFEST
FORMAT_VERSION = 1
MIDI_SUFFIXES = (".mid", ".midi")
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_FLUSH_S = 5.0


# ----------------------------------------------------------------------------------------------------------
# Worker side (runs in a child process; also in-process when workers=0)
def _tokenize_file(path: str, reader, max_seconds: float) -> tuple:
    try:
        score = reader(path, max_seconds)
    except MidiReadError as e:
        return ("skip", str(e))
    except (OSError, ValueError, RuntimeError, IndexError, KeyError, EOFError) as e:
        return ("skip", f"reader error ({type(e).__name__}: {str(e)[:120]})")
    st = vocab.EncodeStats()
    tokens = vocab.encode(score, st)
    if st.kept == 0:
        return ("skip", f"no usable notes ({st.out_of_range} out of range)")
    return ("ok", tokens, st.kept, score.duration, asdict(st))


def _hash_and_tokenize(path: str, reader, max_seconds: float) -> tuple[str | None, tuple]:
    """(sha256 of the file, _tokenize_file's result): a new file is hashed here, in the worker, not in the
    build process, which would otherwise spend as long hashing as a few workers spend tokenizing."""
    try:
        digest = _sha256(Path(path))
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


# ----------------------------------------------------------------------------------------------------------
# Build
@dataclass
class BuildSummary:
    """What one build did; printed by `python -m aurl.data build`."""

    cache_dir: str
    data_dir: str
    files: int = 0
    pieces: int = 0
    tokens: int = 0
    notes: int = 0
    duration_s: float = 0.0
    train_pieces: int = 0
    val_pieces: int = 0
    train_tokens: int = 0
    val_tokens: int = 0
    tokenized: int = 0
    reused: int = 0
    removed: int = 0
    new_skipped: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    note_stats: dict[str, int] = field(default_factory=dict)  # EncodeStats summed over the pieces
    seconds: float = 0.0

    def format(self) -> str:
        rate = self.tokenized / self.seconds if self.seconds > 0 else 0.0
        lines = [
            f"cache {self.cache_dir} (data: {self.data_dir})",
            f"  {self.pieces} pieces, {self.tokens:,} tokens, {self.notes:,} notes, {self.duration_s / 3600:.2f} h of music",
            f"  train: {self.train_pieces} pieces / {self.train_tokens:,} tokens;"
            f" val: {self.val_pieces} pieces / {self.val_tokens:,} tokens",
            f"  this build: {self.tokenized} files tokenized, {self.reused} unchanged, {self.removed} removed,"
            f" {self.new_skipped} newly skipped, {self.seconds:.1f} s ({rate:.0f} files/s)",
            "  notes: " + format_note_stats(self.note_stats),
            f"  skipped files: {len(self.skipped)}",
        ]
        lines += [f"    {path}: {reason}" for path, reason in self.skipped]
        return "\n".join(lines)


def total_note_stats(pieces: list[dict]) -> dict[str, int]:
    """The manifest's per-piece encode stats (aurl.vocab.EncodeStats), summed."""
    return {k: sum(p["stats"][k] for p in pieces) for k in vocab.EncodeStats.__dataclass_fields__}


def format_note_stats(s: dict[str, int]) -> str:
    """One line: what the vocabulary kept of the notes read, and what it merged, cut or left out."""
    return (f"{s['kept']:,} of {s['notes_in']:,} kept ({s['drums_kept']:,} drums), {s['merged']:,} merged, "
            f"{s['truncated']:,} truncated, {s['out_of_range']:,} out of range")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sha256_or_empty(path: Path) -> str:
    """The hash of a file whose reader died before hashing it ("" when it cannot be read at all)."""
    try:
        return _sha256(path)
    except OSError:
        return ""


def _split_score(seed: int, rel: str) -> float:
    digest = hashlib.sha256(f"{seed}:{rel}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def piece_split(seed: int, rel: str, val_fraction: float) -> str:
    """A piece's split by a hash of (seed, path): adding or removing other files never moves it."""
    return "val" if _split_score(seed, rel) < val_fraction else "train"


def ensure_both_splits(pieces: list[dict], val_fraction: float, seed: int) -> None:
    """When every piece fell into one split, move the one whose hash is nearest the other (in place); a
    no-op but for tiny folders. Applied when the cache is opened, so the stored splits stay per piece."""
    if len(pieces) < 2 or val_fraction <= 0:
        return
    for want, pick in (("val", min), ("train", max)):
        if not any(p["split"] == want for p in pieces):
            pick(pieces, key=lambda p: _split_score(seed, p["path"]))["split"] = want


def assign_split(pieces: list[dict], val_fraction: float, seed: int) -> None:
    """Set piece["split"] in place: by a hash of (seed, path); both splits non-empty when that is possible."""
    for p in pieces:
        p["split"] = piece_split(seed, p["path"], val_fraction)
    ensure_both_splits(pieces, val_fraction, seed)


def scan_midi_files(data_dir: Path) -> list[Path]:
    return sorted(
        p for p in data_dir.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES and p.is_file()
    )


def build(
    data_dir: str | os.PathLike,
    cache_dir: str | os.PathLike,
    val_fraction: float = 0.05,
    split_seed: int = 0,
    workers: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_seconds: float = MAX_SECONDS,
    flush_seconds: float = DEFAULT_FLUSH_S,
    progress: bool = True,
    reader=read_midi,
) -> BuildSummary:
    """Build or update the cache of data_dir in cache_dir (see the module docstring). UserError on bad input.

    workers: reader processes (default: all cores; 0 = in this process, without crash isolation).
    reader: path, max_seconds -> Score (a module-level function, so worker processes can import it).
    """
    t0 = time.monotonic()
    data = Path(data_dir).expanduser().resolve()
    if not data.is_dir():
        raise UserError(f"data folder not found: {data_dir}")
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if workers is not None and workers < 0:  # no reader process at all would wait forever
        raise UserError(f"workers must be >= 0, got {workers}")
    if timeout_s <= 0:
        raise UserError(f"timeout_s must be > 0 seconds, got {timeout_s}")
    cache = Path(cache_dir).expanduser()
    # what this build creates, removed again when the folder holds no usable file
    created = _first_missing_folder(cache / "shards")
    new_lock = not (cache / ".lock").exists()
    (cache / "shards").mkdir(parents=True, exist_ok=True)
    lock = open(cache / ".lock", "w")  # noqa: SIM115 - held for the whole build
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        return _build_locked(
            data, cache, val_fraction, split_seed, workers, timeout_s, max_seconds, flush_seconds,
            progress, reader, t0,
        )
    except NoUsableFile:
        if new_lock:
            (cache / ".lock").unlink(missing_ok=True)
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


class NoUsableFile(UserError):
    """The data folder holds no file that gives tokens; the build leaves no cache behind."""


def _first_missing_folder(path: Path) -> Path | None:
    """The outermost folder of `path` that does not exist yet (what a build creates), None if path exists.
    UserError when the path, or a folder above it, is a file."""
    check_writable_folder("cache folder", path.parent)
    missing = None
    for p in (path, *path.parents):
        if p.exists():
            return missing
        missing = p
    return missing


def _diff(files: list[Path], data: Path, old_entries: dict, same_dir: bool, summary: BuildSummary):
    """Sort the folder's files against the old manifest: -> (pieces and skipped kept, each entry as it is
    or with new size/mtime, the entries among them whose size/mtime changed, files to tokenize)."""
    pieces: list[dict] = []
    skipped: list[dict] = []
    touched: list[dict] = []
    todo: list[tuple[str, dict]] = []
    for f in files:
        rel = f.relative_to(data).as_posix()
        st = f.stat()
        meta = {"path": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        prev = old_entries.get(rel)
        if prev is not None and same_dir and prev["size"] == st.st_size and prev["mtime_ns"] == st.st_mtime_ns:
            (skipped if "reason" in prev else pieces).append(prev)
            summary.reused += 1
            continue
        if prev is None:  # a new file: hashed by the worker that reads it
            todo.append((rel, meta))
            continue
        meta["sha256"] = _sha256(f)
        if prev["sha256"] == meta["sha256"]:
            entry = {**prev, **meta}
            (skipped if "reason" in prev else pieces).append(entry)
            touched.append(entry)
            summary.reused += 1
            continue
        todo.append((rel, meta))
    summary.removed = len(set(old_entries) - {f.relative_to(data).as_posix() for f in files})
    return pieces, skipped, touched, todo


def _build_locked(data, cache, val_fraction, split_seed, workers, timeout_s, max_seconds, flush_seconds,
                  progress, reader, t0) -> BuildSummary:
    from tqdm import tqdm

    old = manifest_io.load(cache)
    if old is not None and (old.get("format") != FORMAT_VERSION or old.get("vocab_hash") != vocab.vocab_hash()):
        old = None  # another vocabulary: tokens are worthless, start over
    same_dir = old is not None and old["options"].get("data_dir") == str(data)
    old_entries = {e["path"]: e for e in (old["pieces"] + old["skipped"])} if old else {}

    files = scan_midi_files(data)
    summary = BuildSummary(cache_dir=str(cache), data_dir=str(data), files=len(files))
    pieces, skipped, touched, todo = _diff(files, data, old_entries, same_dir, summary)
    kept = {e["path"] for e in pieces} | {e["path"] for e in skipped}
    options = {"data_dir": str(data), "val_fraction": val_fraction, "split_seed": split_seed,
               "max_seconds": max_seconds, "timeout_s": timeout_s}
    writer = manifest_io.ManifestWriter(cache, {"format": FORMAT_VERSION, "vocab_hash": vocab.vocab_hash(),
                                                "vocab_spec": vocab.vocab_spec(), "options": options}, old)
    if writer.rewrites:  # other options (or none before): every piece's split is computed again
        for p in pieces:
            p["split"] = piece_split(split_seed, p["path"], val_fraction)
    # what the journal must say before the new entries: old entries gone (removed or changed files), touched ones
    backlog = {"removed": [rel for rel in old_entries if rel not in kept], "entries": touched}
    fresh: list[dict] = []  # entries tokenized or skipped since the last flush, journaled at the next one
    pending: list[tuple[dict, np.ndarray]] = []
    last_flush = time.monotonic()
    existing = [int(p.stem) for p in (cache / "shards").glob("*.bin") if p.stem.isdigit()]
    next_shard = max(existing, default=0) + 1

    def flush() -> None:
        nonlocal last_flush, next_shard
        if pending:  # the shard first: a manifest never lists tokens that are not on disk
            shard, next_shard = f"{next_shard:06d}.bin", next_shard + 1
            offset = 0
            for entry, toks in pending:
                entry.update(shard=shard, offset=offset, length=len(toks))
                offset += len(toks)
            atomic_write_bytes(cache / "shards" / shard, np.concatenate([t for _, t in pending]).astype("<i2").tobytes())
            pieces.extend(e for e, _ in pending)
            pending.clear()
        last_flush = time.monotonic()
        if not pieces:  # nothing worth keeping yet: a folder of unusable files leaves no (empty) cache
            return
        if writer.rewrites:
            writer.write_snapshot(pieces, skipped)
        else:
            writer.append(backlog["entries"] + fresh, removed=backlog["removed"])
            backlog["entries"], backlog["removed"] = [], []
        fresh.clear()

    by_rel = dict(todo)
    n_workers = (os.cpu_count() or 1) if workers is None else workers
    paths = [str(data / rel) for rel, _ in todo]
    if n_workers == 0:
        results = ((p, _hash_and_tokenize(p, reader, max_seconds)) for p in paths)
    else:
        results = _run_isolated(paths, reader, max_seconds, n_workers, timeout_s)
    try:
        with tqdm(total=len(paths), desc="tokenizing MIDI", unit="file", leave=False,  # the summary follows
                  disable=not progress or not paths) as bar:
            for path, (digest, res) in results:
                meta = by_rel[Path(path).relative_to(data).as_posix()]
                if "sha256" not in meta:
                    meta["sha256"] = digest if digest is not None else _sha256_or_empty(Path(path))
                if res[0] == "ok":
                    _, toks, n_notes, duration, stats = res
                    entry = {**meta, "notes": n_notes, "duration_s": round(duration, 3), "stats": stats,
                             "split": piece_split(split_seed, meta["path"], val_fraction)}
                    pending.append((entry, toks))
                    fresh.append(entry)
                    summary.tokenized += 1
                else:
                    skipped.append({**meta, "reason": res[1]})
                    fresh.append(skipped[-1])
                    summary.new_skipped += 1
                bar.update(1)
                if time.monotonic() - last_flush >= flush_seconds:
                    flush()
    finally:
        flush()  # also on Ctrl-C: what was tokenized is kept
        if hasattr(results, "close"):
            results.close()

    if not pieces:  # before the shard reclaim below: an existing cache of other data stays as it was
        writer.close()
        raise NoUsableFile(_no_usable_file_message(data, len(files), skipped))
    if not writer.rewrites and writer.wants_compaction():
        writer.write_snapshot(pieces, skipped)
    writer.close()
    _reclaim_shards(cache, {p["shard"] for p in pieces})
    tc = TokenCache(cache, {**writer.header, "pieces": sorted(pieces, key=lambda p: p["path"]), "skipped": skipped})
    _summarize(summary, tc, skipped)
    summary.seconds = time.monotonic() - t0
    return summary


def _reclaim_shards(cache: Path, live: set[str]) -> None:
    """Delete the shards no piece refers to any more (also those of an interrupted build)."""
    for shard in (cache / "shards").glob("*.bin"):
        if shard.name not in live:
            shard.unlink()


def _summarize(summary: BuildSummary, tc: TokenCache, skipped: list[dict]) -> None:
    pieces = tc.pieces
    summary.pieces = len(pieces)
    summary.tokens = sum(p["length"] for p in pieces)
    summary.notes = sum(p["notes"] for p in pieces)
    summary.duration_s = sum(p["duration_s"] for p in pieces)
    summary.train_pieces, summary.val_pieces = len(tc.train_pieces), len(tc.val_pieces)
    summary.train_tokens = sum(p["length"] for p in tc.train_pieces)
    summary.val_tokens = sum(p["length"] for p in tc.val_pieces)
    summary.skipped = [(s["path"], s["reason"]) for s in sorted(skipped, key=lambda s: s["path"])]
    summary.note_stats = total_note_stats(pieces)


def _no_usable_file_message(data: Path, n_files: int, skipped: list[dict]) -> str:
    if n_files == 0:
        return f"no usable MIDI file in {data}: it holds no .mid/.midi file (searched recursively)"
    first = sorted(skipped, key=lambda s: s["path"])[:3]
    reasons = "; ".join(f"{s['path']}: {one_line(s['reason'])}" for s in first)
    more = f"; {len(skipped) - len(first)} more" if len(skipped) > len(first) else ""
    return f"no usable MIDI file in {data}: {len(skipped)} of {n_files} files skipped ({reasons}{more})"


# ----------------------------------------------------------------------------------------------------------
# Reading a cache
class TokenCache:
    """A built cache: the manifest plus memory-mapped shards (opened lazily, so it pickles cheaply).

    The manifest's entries are kept by column (manifest.PieceTable): the loader reads the columns it needs
    (split_columns); `pieces`, `train_pieces`, `val_pieces` and `manifest` build their dicts on first use."""

    def __init__(self, cache_dir: Path, manifest: dict):
        self.cache_dir = Path(cache_dir)
        self._manifest = manifest
        for key in ("pieces", "skipped"):  # a build hands over lists of dicts; open() hands over tables
            if isinstance(manifest[key], list):
                manifest[key] = manifest_io.PieceTable.from_rows(manifest[key])
        self.vocab_hash: str = manifest["vocab_hash"]
        table: manifest_io.PieceTable = manifest["pieces"]
        options = manifest["options"]
        self._split = _both_splits(table.columns.get("path", []), table.columns.get("split", []),
                                   options["val_fraction"], options["split_seed"])
        self._maps: dict[str, np.ndarray] = {}

    @classmethod
    def open(cls, cache_dir: str | os.PathLike) -> TokenCache:
        manifest = manifest_io.load(Path(cache_dir), tables=True)
        if manifest is None:
            raise UserError(f"no token cache in {cache_dir} (build one: python -m aurl.data build --cache {cache_dir})")
        if manifest.get("vocab_hash") != vocab.vocab_hash():
            raise UserError(f"the cache in {cache_dir} was built with another vocabulary; rebuild it")
        return cls(Path(cache_dir), manifest)

    @functools.cached_property
    def pieces(self) -> list[dict]:
        rows = self._manifest["pieces"].rows()
        for row, split in zip(rows, self._split, strict=True):
            row["split"] = split
        return rows

    @functools.cached_property
    def train_pieces(self) -> list[dict]:
        return [p for p in self.pieces if p["split"] == "train"]

    @functools.cached_property
    def val_pieces(self) -> list[dict]:
        return [p for p in self.pieces if p["split"] == "val"]

    @functools.cached_property
    def manifest(self) -> dict:
        return {**self._manifest, "pieces": self.pieces, "skipped": self._manifest["skipped"].rows()}

    @functools.cached_property
    def fingerprint(self) -> str:
        c = self._manifest["pieces"].columns
        content = [list(t) for t in zip(c.get("path", []), c.get("sha256", []), self._split, c.get("length", []),
                                        strict=True)]
        blob = json.dumps([self.vocab_hash, content], separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def split(self, name: str) -> list[dict]:
        if name not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {name!r}")
        return self.train_pieces if name == "train" else self.val_pieces

    def split_columns(self, name: str) -> dict[str, list]:
        """The pieces of one split by column: {"path", "shard", "offset", "length"}, in manifest order."""
        if name not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {name!r}")
        c = self._manifest["pieces"].columns
        keep = [i for i, s in enumerate(self._split) if s == name]
        return {k: [c[k][i] for i in keep] for k in ("path", "shard", "offset", "length")}

    def shard(self, name: str) -> np.ndarray:
        m = self._maps.get(name)
        if m is None:
            path = self.cache_dir / "shards" / name
            m = np.memmap(path, dtype="<i2", mode="r") if path.stat().st_size else np.zeros(0, np.int16)
            self._maps[name] = m
        return m

    def tokens(self, piece: dict) -> np.ndarray:
        """The int16 tokens of one piece (a read-only memmap view)."""
        return self.shard(piece["shard"])[piece["offset"] : piece["offset"] + piece["length"]]

    def __getstate__(self):  # columns pickle as a few long lists, not 100,000 dicts
        return {"cache_dir": self.cache_dir, "manifest": self._manifest}

    def __setstate__(self, state):
        self.__init__(state["cache_dir"], state["manifest"])


def _both_splits(paths: list[str], splits: list[str], val_fraction: float, seed: int) -> list[str]:
    """ensure_both_splits on columns: the splits, with one piece moved when every piece fell into one."""
    if len(set(splits)) == 2:
        return list(splits)
    rows = [{"path": p, "split": s} for p, s in zip(paths, splits, strict=True)]
    ensure_both_splits(rows, val_fraction, seed)
    return [r["split"] for r in rows]


def ensure_cache(
    data_dir: str | os.PathLike | None,
    cache_dir: str | os.PathLike,
    val_fraction: float = 0.05,
    split_seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    corpus_limit: int | None = None,
) -> TokenCache:
    """A ready cache for data_dir (None = the bundled Bach chorales), building or updating it if needed."""
    if data_dir is None:
        from aurl.data.corpus import default_corpus_dir, ensure_bach_midi

        out = default_corpus_dir()
        if corpus_limit is not None:  # a separate folder: the build takes every file of its folder
            out = out.with_name(f"{out.name}_first{corpus_limit}")
        data_dir = ensure_bach_midi(out, limit=corpus_limit, workers=workers, progress=progress)
    summary = build(data_dir, cache_dir, val_fraction=val_fraction, split_seed=split_seed, workers=workers,
                    progress=progress)
    if not summary.train_pieces or not summary.val_pieces:  # said here, where the cause is known
        raise UserError(f"{summary.data_dir}: only {summary.pieces} usable MIDI file ({len(summary.skipped)} "
                        "skipped); training needs at least 2 pieces (one is held out for validation)")
    return TokenCache.open(cache_dir)
