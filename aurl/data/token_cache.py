"""Reading a built token cache (aurl/data/cache.py builds it): the manifest plus memory-mapped shards.

Layout of a cache folder:

    manifest.json        vocab hash + spec, build options, one entry per piece and per skipped file
    manifest.journal     entries added since manifest.json was written whole (aurl/data/manifest.py)
    shards/NNNNNN.bin    raw int16 tokens of many pieces back to back (a piece = offset + length in a shard)
    .lock                held while a build runs (several ranks calling ensure_cache wait for the first)

The train/validation split is by piece: a piece is in validation when a hash of (seed, relative path) falls
below val_fraction, so adding files never moves the others between splits.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from aurl import codec, vocab
from aurl.console import UserError
from aurl.data import manifest as manifest_io


# ----------------------------------------------------------------------------------------------------------
# The train/validation split
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


def _both_splits(paths: list[str], splits: list[str], val_fraction: float, seed: int) -> list[str]:
    """ensure_both_splits on columns: the splits, with one piece moved when every piece fell into one."""
    if len(set(splits)) == 2:
        return list(splits)
    rows = [{"path": p, "split": s} for p, s in zip(paths, splits, strict=True)]
    ensure_both_splits(rows, val_fraction, seed)
    return [r["split"] for r in rows]


# ----------------------------------------------------------------------------------------------------------
# The manifest's note counts
def total_note_stats(pieces: list[dict]) -> dict[str, int]:
    """The manifest's per-piece encode stats (aurl.codec.EncodeStats), summed."""
    return {k: sum(p["stats"][k] for p in pieces) for k in codec.EncodeStats.__dataclass_fields__}


def format_note_stats(s: dict[str, int]) -> str:
    """One line: what the vocabulary kept of the notes read, and what it merged, cut or left out."""
    return (f"{s['kept']:,} of {s['notes_in']:,} kept ({s['drums_kept']:,} drums), {s['merged']:,} merged, "
            f"{s['truncated']:,} truncated, {s['out_of_range']:,} out of range")


# ----------------------------------------------------------------------------------------------------------
# The reader
class TokenCache:
    """A built cache: the manifest plus memory-mapped shards (opened lazily, so it pickles cheaply).

    The manifest's entries are kept by column (manifest.PieceTable): the loader reads the columns it needs
    (split_columns); `pieces`, `train_pieces`, `val_pieces` and `manifest` build their dicts on first use."""

    def __init__(self, cache_dir: Path, manifest: dict):
        self.cache_dir = Path(cache_dir)
        self._manifest = manifest  # "pieces" and "skipped" by column (manifest.PieceTable), from open() or a build
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

    def column(self, key: str, skipped: bool = False) -> list:
        """One column of the manifest's pieces (or skipped files), in path order ([] when no entry has it)."""
        return self._manifest["skipped" if skipped else "pieces"].columns.get(key, [])

    def note_stats(self) -> dict[str, int]:
        """total_note_stats over the pieces, from the columns."""
        return {k: sum(v or 0 for v in self.column(f"stats.{k}")) for k in codec.EncodeStats.__dataclass_fields__}

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
