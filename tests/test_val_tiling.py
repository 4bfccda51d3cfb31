"""The validation windows' layout (aurl/data/val_tiling.py): the same windows as the walk it replaces, built
on first use, not when the dataset is constructed."""

from __future__ import annotations

import numpy as np
import pytest
from midi_factory import random_score

from aurl import codec, vocab
from aurl.data import val_tiling
from aurl.data.dataset import WindowDataset


class MemoryCache:
    """What WindowDataset reads of a TokenCache, over pieces held in memory (one shard)."""

    def __init__(self, pieces: list[np.ndarray]):
        self.cache_dir = "memory"
        self.tokens = np.concatenate(pieces).astype(np.int16)
        self.lengths = [len(p) for p in pieces]
        self.reads = 0

    def split_columns(self, name: str) -> dict[str, list]:
        n = len(self.lengths)
        offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).tolist()
        return {"path": [f"p{i}.mid" for i in range(n)], "shard": ["0.bin"] * n, "offset": offsets,
                "length": self.lengths}

    def shard(self, name: str) -> np.ndarray:
        self.reads += 1
        return self.tokens


def _pieces() -> list[np.ndarray]:
    """Encoded scores with overlaps, several instruments, drums, tempo changes and pedal; the same with a few
    NOTE_OFFs dropped (a note then pairs with a later
    one's NOTE_OFF, two of a pitch sound at once, the last one to the end); one shorter than any window; one empty but for START/END."""
    encoded = [codec.encode(random_score(seed, n_notes=150, drums=seed % 2 == 0)).astype(np.int16)
               for seed in range(4)]
    rng = np.random.default_rng(0)
    cut = []
    for toks in encoded[:2]:
        offs = np.flatnonzero(vocab.KIND_OF_ID[toks] == vocab.KIND_NAMES.index("note_off"))
        cut.append(np.delete(toks, rng.choice(offs, size=len(offs) // 4, replace=False)))
    return [*encoded, *cut, encoded[0][:3], np.array([vocab.START_ID, vocab.END_ID], dtype=np.int16)]


def _walked_starts(ds: WindowDataset, piece: int) -> list[int]:
    """The layout's definition, one window after the other: start 0, then each next start where the window
    before ends its own tokens (seq_len less the state prefix the dataset puts in front of it)."""
    n, pos, starts = int(ds._length[piece]), 0, []
    while True:
        starts.append(pos)
        pos += ds._own_len(piece, pos)
        if pos >= n:
            return starts


@pytest.mark.parametrize("seq_len", [4, 24, 96, 512])
def test_validation_windows_are_those_of_the_walk(seq_len):
    pieces = _pieces()
    ds = WindowDataset(MemoryCache(pieces), "val", seq_len=seq_len)
    want = [(p, s) for p in range(len(pieces)) for s in _walked_starts(ds, p)]
    assert [ds.locate(0, i) for i in range(len(ds))] == want
    assert len({p for p, s in want if s > 0}) >= 6  # several windows in most pieces: prefixes were needed


def test_pieces_are_laid_out_in_chunks_as_at_once(monkeypatch):
    pieces = _pieces()
    whole = val_tiling.tile_starts(pieces, 24)
    monkeypatch.setattr(val_tiling, "CHUNK_TOKENS", 500)  # a chunk every piece or two
    assert all(np.array_equal(a, b) for a, b in zip(val_tiling.tile_starts(pieces, 24), whole, strict=True))


def test_layout_is_built_on_first_use_not_at_construction():
    """A 100,000-piece validation split (a large corpus has ~5,000): construction reads no token; the first
    len() lays out every piece once (two windows each: a piece up to half a window longer than one needs
    no state to be laid out)."""
    piece = _pieces()[0][:180]
    cache = MemoryCache([piece] * 100_000)
    ds = WindowDataset(cache, "val", seq_len=128)
    assert cache.reads == 0
    per_piece = len(_walked_starts(ds, 0))
    cache.reads = 0
    assert per_piece == 2 and len(ds) == 200_000 and cache.reads == 100_000  # a view of each piece, once
    assert ds.locate(0, len(ds) - 1) == (99_999, _walked_starts(ds, 0)[-1])
