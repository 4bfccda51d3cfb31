"""Data pipeline benchmark (not a test): ingest and loader throughput, side by side with MidiTok.

    python bench/bench_data.py [--data DIR] [--seq-len 512] [--samples 4000] [--rounds 1]

Prints, in one run on the same files and this machine's cores:
- ingest: files/s and tokens/s of our cache build (all cores, and one worker process) next to MidiTok's
  REMI tokenizer reading with symusic (MidiTok tokenizes in one process);
- loader: tokens/s of WindowDataset items without and with augmentation, in one process (= per core).
Targets (issue 2): ingest at least as fast as MidiTok; loader >= 5 M tokens/s/core plain, >= 1 M augmented.
Needs the `bench` extra (miditok). Default data: the bundled Bach chorales.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def bench_ours(files_dir: Path, workers: int) -> tuple[float, int, int]:
    from aurl.data.cache import build

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        s = build(files_dir, Path(tmp) / "cache", workers=workers, progress=False)
        return time.perf_counter() - t, s.tokenized, s.tokens


def bench_miditok(files: list[Path]) -> tuple[float, int, int]:
    import miditok
    import symusic

    tokenizer = miditok.REMI(miditok.TokenizerConfig())
    t = time.perf_counter()
    n_tokens = n_files = 0
    for f in files:
        try:
            out = tokenizer.encode(symusic.Score(str(f)))
        except Exception:  # noqa: BLE001 - count as skipped, like our build does
            continue
        seqs = out if isinstance(out, list) else [out]
        n_tokens += sum(len(s.ids) for s in seqs)
        n_files += 1
    return time.perf_counter() - t, n_files, n_tokens


def bench_loader(cache_dir: Path, seq_len: int, samples: int, augment) -> tuple[float, float]:
    """(real tokens/s, window tokens/s incl. padding) of ds[(epoch, index)] in this process."""
    from aurl.data.dataset import WindowDataset
    from aurl.data.token_cache import TokenCache

    ds = WindowDataset(TokenCache.open(cache_dir), "train", seq_len=seq_len, augment=augment, seed=0)
    keys = [(e, i) for e in range(-(-samples // len(ds))) for i in range(len(ds))][:samples]
    for k in keys[:50]:  # warm up (memmap pages, imports)
        ds[k]
    real = 0
    t = time.perf_counter()
    for k in keys:
        real += int(ds[k]["loss_mask"].sum())
    dt = time.perf_counter() - t
    return real / dt, len(keys) * seq_len / dt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="MIDI folder (default: the bundled Bach chorales)")
    p.add_argument("--seq-len", type=int, default=512, help="loader window length, tokens")
    p.add_argument("--samples", type=int, default=4000, help="loader samples per measurement")
    p.add_argument("--rounds", type=int, default=1, help="ingest runs per side, interleaved; the best is shown")
    args = p.parse_args()

    from aurl.data.augment import AugmentConfig
    from aurl.data.cache import build
    from aurl.data.folder_diff import scan_midi_files

    if args.data is None:
        from aurl.data.corpus import ensure_bach_midi

        data = ensure_bach_midi()
    else:
        data = Path(args.data)
    files = scan_midi_files(data)
    cores = os.cpu_count() or 1
    print(f"data: {data} ({len(files)} files), {cores} cores")

    # each side `rounds` times, interleaved, keeping its best: on a shared machine the load moves between
    # runs, and the best of a few is the closest to what the code itself costs
    best: dict[str, tuple[float, int, int]] = {}
    for _ in range(args.rounds):
        runs = [("MidiTok REMI (symusic), 1 process", lambda: bench_miditok(files))]
        runs += [(f"aurl build, {w} worker{'s' if w > 1 else ''}", lambda w=w: bench_ours(data, w))
                 for w in dict.fromkeys((cores, 1))]
        for label, run in runs:
            res = run()
            if label not in best or res[0] < best[label][0]:
                best[label] = res
    rows = [(label, n / dt, tok / dt) for label, (dt, n, tok) in best.items()]
    rows.append(rows.pop(0))  # MidiTok last: the baseline
    print(f"\n{'ingest':40s} {'files/s':>10s} {'tokens/s':>12s} {'files/s vs MidiTok':>20s}")
    for label, fps, tps in rows:
        print(f"{label:40s} {fps:10.0f} {tps:12,.0f} {fps / rows[-1][1]:19.2f}x")

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        build(data, cache, workers=cores, progress=False)
        plain = bench_loader(cache, args.seq_len, args.samples, None)
        stage2 = AugmentConfig(enabled=True)  # transpose +-6, stretch 0.85-1.15, velocity 0.7-1.3
        aug2 = bench_loader(cache, args.seq_len, args.samples, stage2)
        everything = AugmentConfig(enabled=True, transpose_prob=1, transpose_max=8, stretch_prob=1,
                                   stretch_min=0.8, stretch_max=1.25, velocity_prob=1, instrument_prob=1,
                                   swing_prob=1, humanize_prob=1)
        aug_all = bench_loader(cache, args.seq_len, args.samples, everything)
    print(f"\n{'loader (1 process, seq_len ' + str(args.seq_len) + ')':40s} {'tokens/s':>12s} {'incl. PAD':>12s}"
          f" {'target':>10s} {'ratio':>7s}")
    for label, (real, window), target in (("no augmentation", plain, 5e6), ("stage-2 augmentation", aug2, 1e6),
                                          ("every transform, p=1", aug_all, 1e6)):
        print(f"{label:40s} {real:12,.0f} {window:12,.0f} {target:10,.0f} {real / target:6.2f}x")


if __name__ == "__main__":
    main()
