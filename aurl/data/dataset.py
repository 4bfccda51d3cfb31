"""Windows of cached tokens and a resumable, rank-sharded batch sampler.

    ds = WindowDataset(cache, split="train", seq_len=1024, augment=AugmentConfig(...), seed=0)
    sampler = EpochBatchSampler(len(ds), batch_size=8, seed=0, rank=r, world_size=w)
    sampler.set_epoch(e); sampler.set_start_batch(k)        # k > 0 only when resuming inside epoch e
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=2)

Windows carry their state: one that starts inside a piece begins with a short prefix restating what is in
force at its first token (tempo, sustain, the notes sounding with their instrument and velocity, then the
instrument and velocity in force: aurl.grammar.state_prefix), so every window is a self-contained,
grammatical stream (no NOTE_OFF without its NOTE_ON) and augmentation finds the state tokens it transforms in
every window. The prefix counts within seq_len and is not scored (loss_mask False, see WindowDataset).

Training: each piece gives ceil(length / seq_len) windows per epoch (at least one). A `start_share` of them
begins at the piece's opening (START); the others start where a uniform draw puts them, clipped to the piece
so that every token is covered equally often and the windows at either end (START, END) are reached.
Validation: windows are laid back to back, the same every epoch, each starting where the previous one's own
tokens end (laid out on first use, all pieces at once: aurl/data/val_tiling.py). Everything about sample
(epoch, index) -- which piece, where, which augmentation -- is a pure function of (seed, epoch, index), so a
resumed run sees the very same batches.
"""

from __future__ import annotations

import functools
import hashlib
from collections import OrderedDict, defaultdict
from dataclasses import replace

import numpy as np
import torch

from aurl import grammar, vocab
from aurl.console import UserError
from aurl.data.augment import TRANSFORMS, AugmentConfig, augment_tokens, sample_rng
from aurl.data.token_cache import TokenCache
from aurl.data.val_tiling import tile_starts

MAX_SEQ_LEN = 2048
STATE_CACHE_PIECES = 256  # per-piece state indexes kept per process (~40 bytes per token each)
WARP_MARGIN = 64  # extra raw tokens read when a time warp may shorten the window (merged long shifts)


_M64 = (1 << 64) - 1


def _mix64(*values: int) -> int:
    """splitmix64 over the values: a cheap, well-mixed pure function (a Generator costs ~20 us to seed)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & _M64)) * 0xBF58476D1CE4E5B9 & _M64
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & _M64
        h ^= h >> 29
    return h


class WindowDataset(torch.utils.data.Dataset):
    """ds[(epoch, index)] -> {"input_ids": LongTensor[seq_len], "loss_mask": BoolTensor[seq_len]}.

    loss_mask is True on the window's own tokens: False on PAD and on the state prefix. The prefix is not
    scored because it is not part of the piece: it restates what the tokens before the window already said,
    so scoring it would count those notes twice and make per-note NLL depend on where windows are cut. Every
    token of the piece after START is scored once per pass over the validation windows.
    """

    def __init__(
        self,
        cache: TokenCache,
        split: str = "train",
        seq_len: int = 1024,
        augment: AugmentConfig | None = None,
        seed: int = 0,
        start_share: float = 0.0,
    ):
        if not 2 <= seq_len <= MAX_SEQ_LEN:
            raise UserError(f"seq_len must be in [2, {MAX_SEQ_LEN}], got {seq_len}")
        if not 0.0 <= start_share <= 1.0:
            raise UserError(f"data.start_share must be in [0, 1], got {start_share}")
        pieces = cache.split_columns(split)  # by column: no dict per piece (100,000s of them in a large corpus)
        if not pieces["path"]:
            raise UserError(f"the {split!r} split of the cache in {cache.cache_dir} has no pieces")
        self.cache, self.split, self.seq_len, self.seed = cache, split, seq_len, seed
        self.start_share = float(start_share)
        self.augment = augment if augment is not None and augment.enabled else None
        self.paths = pieces["path"]
        shard_names = sorted(set(pieces["shard"]))
        self._shard_names = shard_names
        shard_number = {name: i for i, name in enumerate(shard_names)}  # not list.index: pieces x shards
        self._shard_of = np.array([shard_number[s] for s in pieces["shard"]], dtype=np.int64)
        self._offset = np.array(pieces["offset"], dtype=np.int64)
        self._length = np.array(pieces["length"], dtype=np.int64)
        self._end_starts: dict[int, int] = {}  # piece -> start of its window that ends with END (lazy)
        self._states: OrderedDict[int, grammar.PieceStates] = OrderedDict()  # the latest pieces' states (LRU)
        self._raw_len = seq_len + (WARP_MARGIN if self.augment is not None and self.augment.warps_time else 0)

    @functools.cached_property
    def _layout(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(the first sample of each piece, the total last; the validation windows' starts back to back, or
        None for training). Validation windows start where the previous one's own tokens end, which takes
        the state at every start (aurl/data/val_tiling.py): laid out on first use, not at construction."""
        if self.split == "train":
            windows, starts = np.maximum(1, -(-self._length // self.seq_len)), None
        else:
            tiles = tile_starts([self._tokens(p) for p in range(len(self._length))], self.seq_len)
            windows = np.array([len(t) for t in tiles], dtype=np.int64)
            starts = np.concatenate(tiles)
        return np.concatenate([[0], np.cumsum(windows)]).astype(np.int64), starts

    def __len__(self) -> int:
        return int(self._layout[0][-1])

    # ------------------------------------------------------------------------------------------ positions
    def _tokens(self, piece: int) -> np.ndarray:
        shard = self.cache.shard(self._shard_names[self._shard_of[piece]])
        off = int(self._offset[piece])
        return shard[off : off + int(self._length[piece])]

    def _state(self, piece: int, start: int) -> tuple[np.ndarray, int]:
        """(state prefix, clock in steps) before token `start` of the piece (empty prefix at the opening)."""
        if start == 0:
            return np.zeros(0, dtype=np.int16), 0
        st = self._piece_states(piece).state(start)
        prefix = grammar.state_prefix(st)
        room = self.seq_len - max(1, self.seq_len // 2)  # at least half of a window is the piece's own tokens
        if len(prefix) > room:  # only far shorter windows than a chord: keep tempo/instrument/velocity
            prefix = grammar.state_prefix(st, with_notes=False)
            if len(prefix) > room:
                prefix = prefix[:0]
        return prefix, st.step

    def _piece_states(self, piece: int) -> grammar.PieceStates:
        """Per-piece state index, built on first use: one O(length) pass instead of a walk per window."""
        states = self._states.get(piece)
        if states is None:
            states = self._states[piece] = grammar.PieceStates(self._tokens(piece))
            if len(self._states) > STATE_CACHE_PIECES:
                self._states.popitem(last=False)
        else:
            self._states.move_to_end(piece)
        return states

    def _own_len(self, piece: int, start: int) -> int:
        return self.seq_len - len(self._state(piece, start)[0])

    def _end_start(self, piece: int) -> int:
        """The start of the window that ends with the piece's END: about the earliest start whose window (its
        state prefix included) still holds END. The prefix's length depends on the start, so a few rounds
        settle it, at most a few tokens late (that window is then a little short of seq_len, PAD-filled)."""
        if piece not in self._end_starts:
            n = int(self._length[piece])
            s = max(0, n - self.seq_len)
            for _ in range(8):  # the prefix length depends on s: a few rounds settle it
                if s == 0 or s + self._own_len(piece, s) >= n:
                    break
                s = min(n - 1, n - self._own_len(piece, s))
            self._end_starts[piece] = 0 if s <= 1 else s
        return self._end_starts[piece]

    def locate(self, epoch: int, index: int) -> tuple[int, int]:
        """(piece number, start token) of sample (epoch, index), before augmentation.

        Training: a start_share of windows begins at the opening (START); the others draw x uniformly from
        [-(seq_len - 1), length - 1] and clip it to the piece, so every token is covered equally often and
        the windows at either end (START, END) come with the share that coverage implies.
        """
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} outside [0, {len(self)})")
        first, val_starts = self._layout
        piece = int(np.searchsorted(first, index, side="right") - 1)
        if val_starts is not None:
            return piece, int(val_starts[index])
        n, L = int(self._length[piece]), self.seq_len
        if n <= L or (_mix64(self.seed, epoch, index) >> 11) * 2.0**-53 < self.start_share:
            return piece, 0
        x = _mix64(self.seed, epoch, index, 1) % (n + L - 1) - (L - 1)
        if x <= 1:  # at 1 (just after START) the prefix would be empty: start at START itself
            return piece, 0
        if x >= n - L:
            return piece, self._end_start(piece)
        return piece, int(x)

    # -------------------------------------------------------------------------------------------- samples
    def window(self, epoch: int, index: int) -> tuple[np.ndarray, dict]:
        """The (augmented) int16 tokens of one sample, at most seq_len long, and what was done to it:
        {"start": token of the piece it starts at, "prefix": state tokens in front, augmentation params}."""
        piece, start = self.locate(epoch, index)
        prefix, clock = self._state(piece, start)
        own = self._tokens(piece)[start : start + self._raw_len - len(prefix)]
        toks = np.concatenate([prefix, np.asarray(own, dtype=np.int16)])
        params: dict = {"start": start, "prefix": len(prefix)}
        if self.augment is not None:
            toks, aug = augment_tokens(toks, self.augment, sample_rng(self.seed, epoch, index, stream=1),
                                       start_clock=lambda: clock, lead=len(prefix))
            params.update(aug)
        return toks[: self.seq_len], params

    def __getitem__(self, key) -> dict[str, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        toks, params = self.window(int(epoch), int(index))
        n = len(toks)
        ids = np.full(self.seq_len, vocab.PAD_ID, dtype=np.int64)
        ids[:n] = toks
        mask = np.zeros(self.seq_len, dtype=bool)
        mask[params["prefix"] : n] = True
        return {"input_ids": torch.from_numpy(ids), "loss_mask": torch.from_numpy(mask)}

    def variant_report(self, epochs: int = 1) -> dict:
        """How much variety the loader gives, over `epochs` epochs of training windows.

        Per piece: distinct windows with and without augmentation. Per transform: the share of windows it
        actually changed when applied alone with the same draws (``coverage``), next to its configured
        probability; the share of windows that start at the piece's opening (START) or hold its END; and the
        share that augmentation as a whole changed.
        """
        aug = self.augment
        singles = {}
        if aug is not None:
            probs = {name: getattr(aug, f"{name}_prob") for name in TRANSFORMS}
            singles = {name: replace(aug, **{f"{o}_prob": 0.0 for o in TRANSFORMS if o != name}) for name in TRANSFORMS}
        seen: dict[int, set] = defaultdict(set)
        plain: dict[int, set] = defaultdict(set)
        changed_by = dict.fromkeys(singles, 0)
        changed = total = at_start = with_end = 0
        try:
            for e in range(epochs):
                for i in range(len(self)):
                    self.augment = None
                    piece, start = self.locate(e, i)
                    base = self.window(e, i)[0]
                    plain[piece].add(_digest(base))
                    at_start += start == 0
                    with_end += bool(len(base)) and int(base[-1]) == vocab.END_ID
                    for name, single in singles.items():
                        self.augment = single
                        changed_by[name] += not np.array_equal(self.window(e, i)[0], base)
                    self.augment = aug
                    full = self.window(e, i)[0]
                    seen[piece].add(_digest(full))
                    changed += not np.array_equal(full, base)
                    total += 1
        finally:
            self.augment = aug
        variants = np.array([len(seen[p]) for p in range(len(self._length))])
        starts = np.array([len(plain[p]) for p in range(len(self._length))])
        total = max(total, 1)
        return {
            "pieces": len(self._length),
            "epochs": epochs,
            "windows_per_piece_per_epoch": float(np.diff(self._layout[0]).mean()),
            "distinct_variants_per_piece": float(variants.mean()),
            "min_distinct_variants_per_piece": int(variants.min()),
            "distinct_without_augmentation": float(starts.mean()),
            "augmented_fraction": changed / total,
            "start_share": at_start / total,
            "end_share": with_end / total,
            "coverage": {name: {"configured": probs[name], "changed": changed_by[name] / total}
                         for name in singles},
        }


def _digest(tokens: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(tokens).tobytes(), digest_size=8).digest()


class EpochBatchSampler:
    """Batches of (epoch, index) keys; the order is a pure function of (seed, epoch); sharded by rank.

    drop_last=True (training): the epoch's permutation is cut into consecutive chunks of batch_size samples,
    and batch b of rank r is chunk b x world_size + r: ranks never share a sample, every rank gets
    (num_samples // world_size) // batch_size full batches, and after k batches per rank exactly the first
    k x batch_size x world_size samples of the permutation have been drawn. So the data cursor is a global
    sample index (set_start_sample), and an optimizer step (grad_accum batches per rank) draws the same
    chunks whatever the number of processes: with the same micro-batch, a step on M processes sees the very
    micro-batches a step on N processes saw (the elastic resume of aurl.train.elastic).
    drop_last=False (validation): every sample exactly once over all ranks, whatever their number, and every
    rank the same number of batches (DeepSpeed ZeRO-3 gathers parameters inside each forward, so all ranks
    must run as many): the first `limit` samples of the order (0 = all) are cut into world_size x
    num_batches contiguous batches as even as possible (sizes differ by at most one, never empty, at most
    batch_size -- but 2 when batch_size is 1 and the samples do not divide evenly), dealt round-robin to the
    ranks. No sample is repeated or padded: a repeated window would weigh twice in the mean, a fully masked
    one would still count in a VAE's per-window KL.
    set_start_batch(k) makes the next iteration begin at batch k of the current epoch without touching the
    batches before it (mid-epoch resume); set_start_sample(i) at the batch that starts at global sample i;
    set_epoch() resets it to 0.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, drop_last: bool = True, limit: int = 0):
        if num_samples < 1 or batch_size < 1 or world_size < 1 or not 0 <= rank < world_size or limit < 0:
            raise ValueError(f"bad sampler arguments: num_samples={num_samples} batch_size={batch_size} "
                             f"rank={rank} world_size={world_size} limit={limit}")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world_size, self.shuffle, self.drop_last = rank, world_size, shuffle, drop_last
        self.epoch = 0
        self.start_batch = 0
        if drop_last:
            self.used = num_samples
            self.num_batches = (num_samples // world_size) // batch_size
            if self.num_batches == 0:
                raise UserError(f"{num_samples} samples make no full batch of {batch_size} on each of "
                                f"{world_size} ranks: lower the batch size or use more data")
        else:
            self.used = min(limit, num_samples) if limit else num_samples
            if self.used < world_size:
                raise UserError(f"{self.used} validation windows cannot give each of {world_size} processes one: "
                                "use fewer processes or more validation data")
            # the fewest batches per rank that hold every sample, but no more than leave each one non-empty
            self.num_batches = min(-(-self.used // (world_size * batch_size)), self.used // world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.start_batch = 0

    def set_start_batch(self, k: int) -> None:
        if not 0 <= k <= self.num_batches:
            raise ValueError(f"start batch {k} outside [0, {self.num_batches}]")
        self.start_batch = int(k)

    def set_start_sample(self, sample: int) -> None:
        """Begin at global sample `sample` of the epoch's order (training: a multiple of batch_size x
        world_size, which a cursor taken at an optimizer-step boundary is when the global batch is kept)."""
        assert self.drop_last, "a global sample cursor is defined for the training layout only"
        per_batch = self.batch_size * self.world_size
        if sample % per_batch:
            raise ValueError(f"sample cursor {sample} is not a multiple of batch_size x world_size = {per_batch}")
        self.set_start_batch(sample // per_batch)

    def __len__(self) -> int:
        return self.num_batches

    def _order(self) -> np.ndarray:
        if self.shuffle:
            return np.random.default_rng([int(self.seed) & 0xFFFFFFFF, self.epoch, 0x5A4D]).permutation(self.num_samples)
        return np.arange(self.num_samples)

    def _rank_batches(self) -> list[np.ndarray]:
        order, w, nb = self._order(), self.world_size, self.num_batches
        if self.drop_last:
            bs = self.batch_size
            return [order[(b * w + self.rank) * bs : (b * w + self.rank + 1) * bs] for b in range(nb)]
        # batch c of all w x nb covers bounds[c]:bounds[c + 1]; rank r takes c = r, r + w, r + 2w, ...
        bounds = np.arange(w * nb + 1) * self.used // (w * nb)
        return [order[bounds[c] : bounds[c + 1]] for c in range(self.rank, w * nb, w)]

    def __iter__(self):
        batches, epoch = self._rank_batches(), self.epoch
        for b in range(self.start_batch, self.num_batches):
            yield [(epoch, int(i)) for i in batches[b]]
