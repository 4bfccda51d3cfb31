"""Windows of cached tokens and a resumable, rank-sharded batch sampler.

    ds = WindowDataset(cache, split="train", seq_len=1024, augment=AugmentConfig(...), seed=0)
    sampler = EpochBatchSampler(len(ds), batch_size=8, seed=0, rank=r, world_size=w)
    sampler.set_epoch(e); sampler.set_start_batch(k)        # k > 0 only when resuming inside epoch e
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=2)

Each piece gives ceil(length / seq_len) windows per epoch (at least one). A training window starts at a
position drawn uniformly from the whole piece (not only its start); a validation window starts at a fixed
stride, the same every epoch. Everything about sample (epoch, index) -- which piece, where, which
augmentation -- is a pure function of (seed, epoch, index), so a resumed run sees the very same batches.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

import numpy as np
import torch

from aurl import vocab
from aurl.console import UserError
from aurl.data.augment import AugmentConfig, augment_tokens, sample_rng
from aurl.data.cache import TokenCache

MAX_SEQ_LEN = 2048
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
    """ds[(epoch, index)] -> {"input_ids": LongTensor[seq_len], "loss_mask": BoolTensor[seq_len]}."""

    def __init__(
        self,
        cache: TokenCache,
        split: str = "train",
        seq_len: int = 1024,
        augment: AugmentConfig | None = None,
        seed: int = 0,
    ):
        if not 2 <= seq_len <= MAX_SEQ_LEN:
            raise UserError(f"seq_len must be in [2, {MAX_SEQ_LEN}], got {seq_len}")
        pieces = cache.split(split)
        if not pieces:
            raise UserError(f"the {split!r} split of the cache in {cache.cache_dir} has no pieces")
        self.cache, self.split, self.seq_len, self.seed = cache, split, seq_len, seed
        self.augment = augment if augment is not None and augment.enabled else None
        self.paths = [p["path"] for p in pieces]
        shard_names = sorted({p["shard"] for p in pieces})
        self._shard_names = shard_names
        self._shard_of = np.array([shard_names.index(p["shard"]) for p in pieces], dtype=np.int64)
        self._offset = np.array([p["offset"] for p in pieces], dtype=np.int64)
        self._length = np.array([p["length"] for p in pieces], dtype=np.int64)
        self._windows = np.maximum(1, -(-self._length // seq_len))
        self._first = np.concatenate([[0], np.cumsum(self._windows)])
        self._raw_len = seq_len + (WARP_MARGIN if self.augment is not None and self.augment.warps_time else 0)

    def __len__(self) -> int:
        return int(self._first[-1])

    def locate(self, epoch: int, index: int) -> tuple[int, int]:
        """(piece number, start token) of sample (epoch, index), before augmentation."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} outside [0, {len(self)})")
        piece = int(np.searchsorted(self._first, index, side="right") - 1)
        last_start = max(0, int(self._length[piece]) - self.seq_len)
        if self.split == "train":
            start = _mix64(self.seed, epoch, index) % (last_start + 1) if last_start else 0
        else:
            start = min((index - int(self._first[piece])) * self.seq_len, last_start)
        return piece, start

    def window(self, epoch: int, index: int) -> tuple[np.ndarray, dict]:
        """The (augmented) int16 tokens of one sample, at most seq_len long, and the augmentation applied."""
        piece, start = self.locate(epoch, index)
        shard = self.cache.shard(self._shard_names[self._shard_of[piece]])
        off, length = int(self._offset[piece]), int(self._length[piece])
        toks = np.asarray(shard[off + start : off + min(length, start + self._raw_len)])
        params: dict = {}
        if self.augment is not None:
            piece_start = shard[off : off + start]
            toks, params = augment_tokens(toks, self.augment, sample_rng(self.seed, epoch, index, stream=1),
                                          start_clock=lambda: int(vocab.shift_steps(piece_start).sum()))
        return toks[: self.seq_len], params

    def __getitem__(self, key) -> dict[str, torch.Tensor]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        toks, _ = self.window(int(epoch), int(index))
        n = len(toks)
        ids = np.full(self.seq_len, vocab.PAD_ID, dtype=np.int64)
        ids[:n] = toks
        mask = np.zeros(self.seq_len, dtype=bool)
        mask[:n] = True
        return {"input_ids": torch.from_numpy(ids), "loss_mask": torch.from_numpy(mask)}

    def variant_report(self, epochs: int = 1) -> dict:
        """How much variety augmentation gives: per piece, distinct windows over `epochs` epochs.

        Returns windows per piece per epoch, distinct variants per piece (mean/min over pieces, all epochs
        together), the same without augmentation (start positions only), and the share of samples that
        augmentation actually changed.
        """
        seen: dict[int, set] = defaultdict(set)
        plain: dict[int, set] = defaultdict(set)
        changed = total = 0
        aug, self.augment = self.augment, None
        try:
            originals = {}
            for e in range(epochs):
                for i in range(len(self)):
                    piece, start = self.locate(e, i)
                    originals[(e, i)] = hashlib.blake2b(self.window(e, i)[0].tobytes(), digest_size=8).digest()
                    plain[piece].add(start)
        finally:
            self.augment = aug
        for e in range(epochs):
            for i in range(len(self)):
                piece, _ = self.locate(e, i)
                h = hashlib.blake2b(self.window(e, i)[0].tobytes(), digest_size=8).digest()
                seen[piece].add(h)
                changed += h != originals[(e, i)]
                total += 1
        variants = np.array([len(seen[p]) for p in range(len(self._length))])
        starts = np.array([len(plain[p]) for p in range(len(self._length))])
        return {
            "pieces": len(self._length),
            "epochs": epochs,
            "windows_per_piece_per_epoch": float(self._windows.mean()),
            "distinct_variants_per_piece": float(variants.mean()),
            "min_distinct_variants_per_piece": int(variants.min()),
            "distinct_without_augmentation": float(starts.mean()),
            "augmented_fraction": changed / max(total, 1),
        }


class EpochBatchSampler:
    """Batches of (epoch, index) keys; the order is a pure function of (seed, epoch); sharded by rank.

    drop_last=True (training): rank r takes every world_size-th sample of the epoch's permutation, so ranks
    never share a sample, and every rank gets (num_samples // world_size) // batch_size full batches.
    drop_last=False (validation): every sample exactly once over all ranks, whatever their number, and every
    rank the same number of batches (DeepSpeed ZeRO-3 gathers parameters inside each forward, so all ranks
    must run as many): the first `limit` samples of the order (0 = all) are cut into world_size x
    num_batches contiguous batches as even as possible (sizes differ by at most one, never empty, at most
    batch_size -- but 2 when batch_size is 1 and the samples do not divide evenly), dealt round-robin to the
    ranks. No sample is repeated or padded: a repeated window would weigh twice in the mean, a fully masked
    one would still count in a VAE's per-window KL.
    set_start_batch(k) makes the next iteration begin at batch k of the current epoch without touching the
    batches before it (mid-epoch resume); set_epoch() resets it to 0.
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

    def __len__(self) -> int:
        return self.num_batches

    def _order(self) -> np.ndarray:
        if self.shuffle:
            return np.random.default_rng([int(self.seed) & 0xFFFFFFFF, self.epoch, 0x5A4D]).permutation(self.num_samples)
        return np.arange(self.num_samples)

    def _rank_batches(self) -> list[np.ndarray]:
        order, w, nb = self._order(), self.world_size, self.num_batches
        if self.drop_last:
            idx = order[self.rank : nb * self.batch_size * w : w]
            return [idx[b * self.batch_size : (b + 1) * self.batch_size] for b in range(nb)]
        # batch c of all w x nb covers bounds[c]:bounds[c + 1]; rank r takes c = r, r + w, r + 2w, ...
        bounds = np.arange(w * nb + 1) * self.used // (w * nb)
        return [order[bounds[c] : bounds[c + 1]] for c in range(self.rank, w * nb, w)]

    def __iter__(self):
        batches, epoch = self._rank_batches(), self.epoch
        for b in range(self.start_batch, self.num_batches):
            yield [(epoch, int(i)) for i in batches[b]]
