"""Building the token cache: flat int16 token shards (numpy memmap) plus a JSON manifest, incrementally.

The layout of a cache folder is in aurl/data/token_cache.py, which reads a built cache.

How a build works, and why:
- Files (recursive, .mid/.midi in any case) whose size and mtime match the manifest are not touched; any
  other file is hashed (sha256), and one whose content is unchanged is kept as is. Only new or changed
  files are tokenized; a file gone from the folder leaves the manifest (its shard bytes are reclaimed once
  no piece uses the shard). That sorting of the folder against the manifest is aurl/data/folder_diff.py.
- Files are read and tokenized in worker processes, each file with a timeout (aurl/data/reader_pool.py): a
  reader crash (even a segfault) or hang costs only that file, which is skipped with the reason. Skipped
  files are kept in the manifest with their reason (and are not retried until changed).
- Results are flushed every few seconds: the new shard is written atomically first, then the entries it
  holds are appended to the manifest's journal (fsynced); the manifest is written whole only by the first
  build (or one with other options) and once at the end of a build that added many entries, and not at all
  by a build that changed nothing. An interrupted build (Ctrl-C, kill -9) therefore loses at most the last
  few seconds of work, never anything the manifest already lists; the next build goes on from there.
- A folder without one usable file is refused (NoUsableFile, a UserError naming the folder and the number of
  skipped files) and leaves no cache: the folders this build created are removed again, and an existing cache
  (of other data) is left exactly as it was (no manifest is written while there is no piece to list).
- The train/validation split is by piece, by a hash of its path (aurl/data/token_cache.py).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aurl import vocab
from aurl.atomic import atomic_write_bytes
from aurl.console import UserError, check_writable_folder, one_line
from aurl.data import manifest as manifest_io
from aurl.data.folder_diff import Entries, diff_folder, scan_midi_stats
from aurl.data.midi_io import MAX_SECONDS, read_midi
from aurl.data.reader_pool import read_files, sha256_or_empty
from aurl.data.token_cache import TokenCache, format_note_stats, piece_split

FORMAT_VERSION = 1
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_FLUSH_S = 5.0


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
    # the cache as the build left it (its manifest's columns are already in memory: ensure_cache returns it
    # rather than reading the manifest a second time, ~0.6 s at 100,000 files)
    token_cache: TokenCache | None = field(default=None, repr=False, compare=False)

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
        opts = _BuildOptions(val_fraction, split_seed, workers, timeout_s, max_seconds, flush_seconds, progress, reader)
        summary = _build_locked(data, cache, opts)
        summary.seconds = time.monotonic() - t0
        return summary
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


@dataclass(frozen=True)
class _BuildOptions:
    """build()'s arguments past the two folders (see build)."""

    val_fraction: float
    split_seed: int
    workers: int | None
    timeout_s: float
    max_seconds: float
    flush_seconds: float
    progress: bool
    reader: object

    def header(self, data: Path) -> dict:
        """The manifest's header: a build with other options (or another vocabulary) rewrites it whole."""
        options = {"data_dir": str(data), "val_fraction": self.val_fraction, "split_seed": self.split_seed,
                   "max_seconds": self.max_seconds, "timeout_s": self.timeout_s}
        return {"format": FORMAT_VERSION, "vocab_hash": vocab.vocab_hash(), "vocab_spec": vocab.vocab_spec(),
                "options": options}

    def split(self, rel: str) -> str:
        return piece_split(self.split_seed, rel, self.val_fraction)


def _build_locked(data: Path, cache: Path, opts: _BuildOptions) -> BuildSummary:
    """The build, under the cache's lock: sort the files against the old manifest, tokenize the new or changed
    ones (flushing as it goes), then finish the manifest and reclaim unused shards. An unchanged folder costs
    a scan, a stat per file and the manifest's columns: no dict per entry, nothing written."""
    old = _reusable_manifest(cache)
    same_dir = old is not None and old["options"].get("data_dir") == str(data)
    scan = scan_midi_stats(data)
    summary = BuildSummary(cache_dir=str(cache), data_dir=str(data), files=len(scan))
    diff = diff_folder(scan, data, old, same_dir)
    summary.reused, summary.removed = diff.reused, len(diff.gone)
    pieces, skipped, touched, removed, todo = diff.pieces, diff.skipped, diff.touched, diff.drop, diff.todo
    writer = manifest_io.ManifestWriter(cache, opts.header(data), old)
    if writer.rewrites:  # other options (or none before): every piece's split is computed again
        if len(pieces.kept):
            pieces.kept.columns["split"] = [opts.split(p) for p in pieces.kept.columns["path"]]
        for p in pieces.new:
            p["split"] = opts.split(p["path"])
    out = _Flusher(cache, writer, pieces, skipped, opts.flush_seconds, touched=touched, removed=removed)
    _tokenize_new_files(todo, data, opts, out, summary)
    _finish_manifest(writer, pieces, skipped, data, len(scan))
    _reclaim_shards(cache, set(pieces.column("shard")))
    summary.token_cache = TokenCache(cache, {**writer.header, "pieces": pieces.table(), "skipped": skipped.table()})
    _summarize(summary, summary.token_cache)
    return summary


def _reusable_manifest(cache: Path) -> dict | None:
    """The cache's manifest (entries by column), or None when there is none or it was built with another
    vocabulary (or format): its tokens are worthless then, and the build starts over."""
    old = manifest_io.load(cache, tables=True)
    if old is not None and (old.get("format") != FORMAT_VERSION or old.get("vocab_hash") != vocab.vocab_hash()):
        return None
    return old


class _Flusher:
    """What a build has read since its last flush, and writing it out: the new shard first (a manifest never
    lists tokens that are not on disk), then its entries to the manifest's journal, or the whole manifest
    when the build rewrites it. `pieces` and `skipped` are the build's entries, their new ones extended here."""

    def __init__(self, cache: Path, writer: manifest_io.ManifestWriter, pieces: Entries, skipped: Entries,
                 flush_seconds: float, touched: list[dict], removed: list[str]):
        self.cache, self.writer, self.flush_seconds = cache, writer, flush_seconds
        self.pieces, self.skipped = pieces, skipped
        # what the journal must say before the new entries: old entries gone (removed or changed files), touched ones
        self.backlog, self.removed = touched, removed
        self.fresh: list[dict] = []  # entries tokenized or skipped since the last flush, journaled at the next one
        self.pending: list[tuple[dict, np.ndarray]] = []
        self.last_flush = time.monotonic()
        existing = [int(p.stem) for p in (cache / "shards").glob("*.bin") if p.stem.isdigit()]
        self.next_shard = max(existing, default=0) + 1

    def add_piece(self, entry: dict, tokens: np.ndarray) -> None:
        self.pending.append((entry, tokens))
        self.fresh.append(entry)

    def add_skipped(self, entry: dict) -> None:
        self.skipped.new.append(entry)
        self.fresh.append(entry)

    def due(self) -> bool:
        return time.monotonic() - self.last_flush >= self.flush_seconds

    def flush(self) -> None:
        if self.pending:
            self._write_shard()
        self.last_flush = time.monotonic()
        if not self.pieces:  # nothing worth keeping yet: a folder of unusable files leaves no (empty) cache
            return
        if self.writer.rewrites:
            self.writer.write_snapshot(self.pieces.table(), self.skipped.table())
        else:
            self.writer.append(self.backlog + self.fresh, removed=self.removed)
            self.backlog, self.removed = [], []
        self.fresh.clear()

    def _write_shard(self) -> None:
        shard, self.next_shard = f"{self.next_shard:06d}.bin", self.next_shard + 1
        offset = 0
        for entry, toks in self.pending:
            entry.update(shard=shard, offset=offset, length=len(toks))
            offset += len(toks)
        tokens = np.concatenate([t for _, t in self.pending]).astype("<i2")
        atomic_write_bytes(self.cache / "shards" / shard, tokens.tobytes())
        self.pieces.new.extend(e for e, _ in self.pending)
        self.pending.clear()


def _tokenize_new_files(todo: list[tuple[str, dict]], data: Path, opts: _BuildOptions, out: _Flusher,
                        summary: BuildSummary) -> None:
    """Read and tokenize the files of `todo` ((relative path, entry so far)), flushing every few seconds and
    once at the end, also on Ctrl-C: what was tokenized is kept."""
    if not todo:  # journal what the diff found (touched, removed files), without paying tqdm's import
        out.flush()
        return
    from tqdm import tqdm

    by_path = {str(data / rel): meta for rel, meta in todo}
    paths = list(by_path)
    results = read_files(paths, opts.reader, opts.max_seconds, opts.workers, opts.timeout_s)
    try:
        with tqdm(total=len(paths), desc="tokenizing MIDI", unit="file", leave=False,  # the summary follows
                  disable=not opts.progress or not paths) as bar:
            for path, (digest, res) in results:
                meta = by_path[path]
                if "sha256" not in meta:
                    meta["sha256"] = digest if digest is not None else sha256_or_empty(Path(path))
                if res[0] == "ok":
                    _, toks, n_notes, duration, stats = res
                    out.add_piece({**meta, "notes": n_notes, "duration_s": round(duration, 3), "stats": stats,
                                   "split": opts.split(meta["path"])}, toks)
                    summary.tokenized += 1
                else:
                    out.add_skipped({**meta, "reason": res[1]})
                    summary.new_skipped += 1
                bar.update(1)
                if out.due():
                    out.flush()
    finally:
        out.flush()
        results.close()


def _finish_manifest(writer: manifest_io.ManifestWriter, pieces: Entries, skipped: Entries, data: Path,
                     n_files: int) -> None:
    """Compact the journal into the manifest when it has grown, and close it; NoUsableFile when no file gave
    tokens (said before any shard is reclaimed: an existing cache of other data stays as it was)."""
    if not pieces:
        writer.close()
        raise NoUsableFile(_no_usable_file_message(data, n_files, skipped.table().rows()))
    if not writer.rewrites and writer.wants_compaction():
        writer.write_snapshot(pieces.table(), skipped.table())
    writer.close()


def _reclaim_shards(cache: Path, live: set[str]) -> None:
    """Delete the shards no piece refers to any more (also those of an interrupted build)."""
    for shard in (cache / "shards").glob("*.bin"):
        if shard.name not in live:
            shard.unlink()


def _summarize(summary: BuildSummary, tc: TokenCache) -> None:
    """The summary's totals, from the manifest's columns."""
    summary.pieces = len(tc.column("path"))
    summary.tokens = sum(tc.column("length"))
    summary.notes = sum(tc.column("notes"))
    summary.duration_s = sum(tc.column("duration_s"))
    train, val = tc.split_columns("train"), tc.split_columns("val")
    summary.train_pieces, summary.val_pieces = len(train["path"]), len(val["path"])
    summary.train_tokens, summary.val_tokens = sum(train["length"]), sum(val["length"])
    summary.skipped = list(zip(tc.column("path", skipped=True), tc.column("reason", skipped=True), strict=True))
    summary.note_stats = tc.note_stats()


def _no_usable_file_message(data: Path, n_files: int, skipped: list[dict]) -> str:
    if n_files == 0:
        return f"no usable MIDI file in {data}: it holds no .mid/.midi file (searched recursively)"
    first = sorted(skipped, key=lambda s: s["path"])[:3]
    reasons = "; ".join(f"{s['path']}: {one_line(s['reason'])}" for s in first)
    more = f"; {len(skipped) - len(first)} more" if len(skipped) > len(first) else ""
    return f"no usable MIDI file in {data}: {len(skipped)} of {n_files} files skipped ({reasons}{more})"


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
    return summary.token_cache
