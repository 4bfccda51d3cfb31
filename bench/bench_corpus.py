"""A Lakh-sized corpus on one machine (not a test): build the token cache of 100,000 synthetic MIDI files.

    python bench/bench_corpus.py [--files 100000] [--corpus DIR] [--workers N] [--delete-corpus] [--json PATH]

The corpus (bench/corpus_factory.py: Bach chorales joined, transposed, re-timed, re-orchestrated, with drum
parts, 1 % corrupt files) is generated once into --corpus (default: ~/.cache/aurl/bench_corpus_<files>) and
reused by later runs; --delete-corpus removes it at the end. The cache is built in a temporary folder (gone
at the end) by `aurl.data.cache.build` in a fresh process, with all cores. Printed, next to a baseline in
the same run (the bundled chorales, 349 files, built the same way):
- build: files/s, tokens/s, peak RSS of the build process and of its largest worker;
- manifest: its size on disk and the time to open the cache; what the old format (the whole manifest
  rewritten, indented, at every flush) would have cost this build;
- an unchanged rebuild (must tokenize nothing and write no manifest), one changed file (must be the only
  one tokenized), the loader's first batch in a fresh process (target < 2 s), and every corrupt file
  skipped and named. Exit code 1 when one of those properties fails;
- the validation dataset: its construction and its layout on first use, on the cache and on its manifest
  repeated over the same shards to --scaled-pieces pieces (a corpus that size, without building one).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import corpus_factory as factory

FIRST_BATCH_TARGET_S = 2.0
BUILD_CODE = """
import json, resource, sys
from dataclasses import asdict
from aurl.data.cache import build
s = build(sys.argv[1], sys.argv[2], workers=None if sys.argv[3] == 'all' else int(sys.argv[3]), progress=False)
me = resource.getrusage(resource.RUSAGE_SELF)  # the build process alone (wait4 adds its readers)
print(json.dumps({k: v for k, v in asdict(s).items() if k != 'skipped'} | {'skipped': [p for p, _ in s.skipped]}
                 | {'self_cpu_s': me.ru_utime + me.ru_stime, 'self_rss_mib': me.ru_maxrss / 1024}))
"""
FIRST_BATCH_CODE = """
import sys, time
t0 = time.perf_counter()
import torch
from aurl.data.token_cache import TokenCache
from aurl.data.dataset import EpochBatchSampler, WindowDataset
t_import = time.perf_counter()
cache = TokenCache.open(sys.argv[1])
t_open = time.perf_counter()
ds = WindowDataset(cache, "train", seq_len=int(sys.argv[2]), seed=0)
loader = torch.utils.data.DataLoader(ds, batch_sampler=EpochBatchSampler(len(ds), int(sys.argv[3]), seed=0))
batch = next(iter(loader))
t_batch = time.perf_counter()
val = WindowDataset(cache, "val", seq_len=int(sys.argv[2]), seed=0)
t_val = time.perf_counter()
n_val = len(val)  # the validation layout, built on first use
t_layout = time.perf_counter()
assert batch["input_ids"].shape == (int(sys.argv[3]), int(sys.argv[2]))
print(t_open - t_import, t_batch - t_import, t_val - t_batch, t_layout - t_val, len(ds), n_val)
"""
# the cache's manifest repeated `factor` times over its real shards (paths made distinct): a validation split
# of a corpus `factor` times the size, without building one
SCALED_VAL_CODE = """
import sys, time
from aurl.data import manifest as manifest_io
from aurl.data.dataset import WindowDataset
from aurl.data.token_cache import TokenCache
m = manifest_io.load(sys.argv[1], tables=True)
factor, cols = int(sys.argv[3]), m["pieces"].columns
cols.update({k: v * factor for k, v in cols.items()})
cols["path"] = [f"{i // (len(cols['path']) // factor)}/{p}" for i, p in enumerate(cols["path"])]
cache = TokenCache(sys.argv[1], m)
t = time.perf_counter()
val = WindowDataset(cache, "val", seq_len=int(sys.argv[2]), seed=0)
t_construct = time.perf_counter()
n = len(val)
t_layout = time.perf_counter()
print(len(cols["path"]), len(val.paths), n, t_construct - t, t_layout - t_construct)
"""


def run_measured(code: str, *args) -> tuple[str, dict]:
    """Run `python -c code args` -> (stdout, {seconds, peak RSS MiB and CPU seconds of that process and the
    processes it started and waited for: the largest one's RSS, everyone's CPU})."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"bench step failed (exit code {proc.returncode}): python -c ... {' '.join(map(str, args))}")
    # Linux's wait4 reports the process together with the children it waited for (RUSAGE_BOTH)
    return out, {"seconds": seconds, "rss_mib": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime}


def build(data: Path, cache: Path, workers: str) -> tuple[dict, dict]:
    """-> (the build's summary, {seconds, rss_mib and cpu_s of the build process alone, readers_cpu_s,
    largest_mib: the largest process of the build, itself or a reader})."""
    out, m = run_measured(BUILD_CODE, data, cache, workers)
    s = json.loads(out.strip().splitlines()[-1])
    return s, {"seconds": m["seconds"], "rss_mib": s["self_rss_mib"], "largest_mib": m["rss_mib"],
               "cpu_s": s["self_cpu_s"], "readers_cpu_s": m["cpu_s"] - s["self_cpu_s"]}


def manifest_files(cache: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in cache.glob("manifest.*")}


def old_format_cost(cache: Path, build_seconds: float, flush_s: float = 5.0) -> tuple[float, float]:
    """(seconds of one whole indented manifest write, estimated total over the build's flushes): the old
    format rewrote everything at every flush, the list growing linearly, so about half the final cost each."""
    from aurl.atomic import atomic_write_json
    from aurl.data.manifest import load

    m = load(cache)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        atomic_write_json(Path(tmp) / "manifest.json", m)
        one = time.perf_counter() - t
    flushes = max(1.0, build_seconds / flush_s)
    return one, one * flushes / 2


def pieces_by_path(cache: Path) -> dict[str, dict]:
    from aurl.data.manifest import load

    return {p["path"]: p for p in load(cache)["pieces"]}


def bench(args) -> dict:
    from aurl.data.corpus import default_corpus_dir, ensure_bach_midi
    from aurl.data.token_cache import TokenCache

    chorales = ensure_bach_midi(progress=False)
    root = Path(args.corpus or default_corpus_dir().with_name(f"bench_corpus_{args.files}"))
    stamp = factory.generate(root, chorales, args.files, seed=args.seed)
    workers = "all" if args.workers is None else str(args.workers)
    fig: dict = {"files": args.files, "corrupt": len(stamp["corrupt"]), "corpus_bytes": stamp["bytes"],
                 "generated_s": stamp["seconds"], "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="aurl_bench_corpus_") as tmp:
        base, m = build(chorales, Path(tmp) / "bach", workers)
        fig["baseline"] = {"files": base["files"], "tokens": base["tokens"], **m}
        cache = Path(tmp) / "cache"
        s, m = build(root, cache, workers)
        fig["build"] = {"tokenized": s["tokenized"], "tokens": s["tokens"], "pieces": s["pieces"],
                        "skipped": s["skipped"], **m}
        sec = m["seconds"]
        fig["manifest_bytes"] = manifest_files(cache)
        t = time.perf_counter()
        TokenCache.open(cache)
        fig["open_s"] = time.perf_counter() - t
        fig["old_write_s"], fig["old_total_s"] = old_format_cost(cache, sec)

        before, mtimes = pieces_by_path(cache), {p.name: p.stat().st_mtime_ns for p in cache.glob("manifest.*")}
        s, m = build(root, cache, workers)
        fig["noop"] = {"seconds": m["seconds"], "tokenized": s["tokenized"], "new_skipped": s["new_skipped"],
                       "manifest_written": {p.name: p.stat().st_mtime_ns for p in cache.glob("manifest.*")} != mtimes}

        changed = factory.file_path(root, 0)
        original = changed.read_bytes()
        try:
            changed.write_bytes(factory.variant_bytes(factory.load_chorales(chorales), args.seed + 1, 0))
            s, m = build(root, cache, workers)
        finally:
            changed.write_bytes(original)  # the corpus stays what its stamp says
        after = pieces_by_path(cache)
        differ = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
        fig["one_changed"] = {"seconds": m["seconds"], "tokenized": s["tokenized"], "entries_changed": differ,
                              "compared": len(before.keys() | after.keys()),
                              "expected": changed.relative_to(root).as_posix(), "manifest_bytes": manifest_files(cache)}

        out, m = run_measured(FIRST_BATCH_CODE, cache, args.seq_len, args.batch)
        open_s, first_s, val_s, layout_s, n_train, n_val = out.split()
        fig["loader"] = {"open_s": float(open_s), "first_batch_s": float(first_s), "val_dataset_s": float(val_s),
                         "val_layout_s": float(layout_s), "train_windows": int(n_train), "val_windows": int(n_val),
                         "process_s": m["seconds"], "rss_mib": m["rss_mib"]}
        factor = max(1, -(-args.scaled_pieces // fig["build"]["pieces"]))
        out, m = run_measured(SCALED_VAL_CODE, cache, args.seq_len, factor)
        pieces, val_pieces, windows, construct_s, layout_s = out.split()
        fig["scaled_val"] = {"factor": factor, "pieces": int(pieces), "val_pieces": int(val_pieces),
                             "val_windows": int(windows), "construct_s": float(construct_s),
                             "layout_s": float(layout_s), "rss_mib": m["rss_mib"]}
        fig["corrupt_named"] = sorted(set(stamp["corrupt"]) & set(fig["build"]["skipped"]))
    if args.delete_corpus:
        shutil.rmtree(root)
    return fig


def checks(fig: dict) -> list[tuple[str, bool]]:
    """The properties this bench guards, each with whether it held."""
    noop, one, b = fig["noop"], fig["one_changed"], fig["build"]
    return [
        ("unchanged rebuild tokenizes nothing and writes no manifest",
         noop["tokenized"] == 0 and noop["new_skipped"] == 0 and not noop["manifest_written"]),
        (f"one changed file is the only one re-tokenized ({one['compared']:,} entries compared)",
         one["tokenized"] == 1 and one["entries_changed"] == [one["expected"]] and one["compared"] == b["pieces"]),
        (f"every corrupt file skipped and named ({fig['corrupt']} of {fig['files']:,})",
         sorted(b["skipped"]) == fig["corrupt_named"] and len(fig["corrupt_named"]) == fig["corrupt"]),
        (f"first batch in under {FIRST_BATCH_TARGET_S:g} s", fig["loader"]["first_batch_s"] < FIRST_BATCH_TARGET_S),
    ]


def report(fig: dict) -> list[str]:
    b, base, sv = fig["build"], fig["baseline"], fig["scaled_val"]
    mib = sum(fig["manifest_bytes"].values()) / 2**20
    rows = [("bundled chorales (baseline)", base["files"], base["seconds"], base["tokens"], base["rss_mib"]),
            (f"synthetic corpus, {fig['files']:,} files", fig["files"], b["seconds"], b["tokens"], b["rss_mib"])]
    lines = [f"corpus: {fig['files']:,} files ({fig['corrupt']} corrupt), {fig['corpus_bytes'] / 2**30:.2f} GiB, "
             f"generated in {fig['generated_s']:.0f} s; {fig['cores']} cores, every one a reader process",
             "",
             f"{'build (fresh process, all cores)':<36}{'files/s':>9}{'tokens/s':>13}{'seconds':>9}{'peak RSS':>10}"]
    lines += [f"{name:<36}{n / s:>9,.0f}{t / s:>13,.0f}{s:>9.1f}{r:>7.0f} MiB" for name, n, s, t, r in rows]
    per_file = [(x["cpu_s"] / x_files * 1e3, x["readers_cpu_s"] / x_files * 1e3)
                for x, x_files in ((base, base["files"]), (b, fig["files"]))]
    lines += [f"largest process of the build (itself or a reader): {b['largest_mib']:.0f} MiB; {b['pieces']:,} pieces,"
              f" {b['tokens']:,} tokens",
              f"CPU per file: build process {per_file[1][0]:.2f} ms, readers {per_file[1][1]:.2f} ms"
              f" (baseline {per_file[0][0]:.2f} / {per_file[0][1]:.2f} ms, startup included): one build process"
              f" feeds ~{per_file[1][1] / max(per_file[1][0], 1e-9):.0f} readers",
              "",
              f"manifest: {mib:.1f} MiB on disk ({', '.join(f'{k} {v / 2**20:.1f} MiB' for k, v in fig['manifest_bytes'].items())}),"
              f" opened in {fig['open_s']:.2f} s",
              f"  old format (whole, indented, rewritten at every 5 s flush): {fig['old_write_s']:.2f} s a write,"
              f" ~{fig['old_total_s']:.0f} s over this build's flushes",
              f"unchanged rebuild: {fig['noop']['seconds']:.1f} s, {fig['noop']['tokenized']} tokenized,"
              f" manifest written: {fig['noop']['manifest_written']}",
              f"one changed file: {fig['one_changed']['seconds']:.1f} s, {fig['one_changed']['tokenized']} tokenized"
              f" ({', '.join(fig['one_changed']['entries_changed'])}); manifest then "
              + ", ".join(f"{k} {v / 2**20:.2f} MiB" for k, v in fig["one_changed"]["manifest_bytes"].items()),
              f"loader (fresh process): cache open {fig['loader']['open_s']:.2f} s, first batch"
              f" {fig['loader']['first_batch_s']:.2f} s after the imports (target < {FIRST_BATCH_TARGET_S:g} s);"
              f" validation dataset {fig['loader']['val_dataset_s']:.3f} s, its layout on first use"
              f" {fig['loader']['val_layout_s']:.2f} s ({fig['loader']['train_windows']:,} train /"
              f" {fig['loader']['val_windows']:,} val windows); its peak RSS {fig['loader']['rss_mib']:.0f} MiB",
              f"validation on the manifest repeated {sv['factor']}x ({sv['pieces']:,} pieces, {sv['val_pieces']:,}"
              f" in validation): constructed in {sv['construct_s']:.3f} s, laid out on first use in"
              f" {sv['layout_s']:.2f} s ({sv['val_windows']:,} windows); peak RSS {sv['rss_mib']:.0f} MiB",
              ""]
    lines += [f"{'ok  ' if ok else 'FAIL'} {what}" for what, ok in checks(fig)]
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=100_000, help="files in the synthetic corpus (1 %% corrupt)")
    p.add_argument("--corpus", default=None, help="corpus folder (default: ~/.cache/aurl/bench_corpus_FILES)")
    p.add_argument("--workers", type=int, default=None, help="reader processes (default: all cores)")
    p.add_argument("--seed", type=int, default=0, help="seed of the corpus")
    p.add_argument("--seq-len", type=int, default=512, help="loader window, tokens")
    p.add_argument("--batch", type=int, default=8, help="loader batch size")
    p.add_argument("--scaled-pieces", type=int, default=100_000,
                   help="pieces of the repeated manifest the validation layout is also timed on")
    p.add_argument("--delete-corpus", action="store_true", help="remove the corpus folder at the end")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args()
    if args.files < 200:
        p.error(f"--files must be >= 200 (two corrupt files at least), got {args.files}")
    fig = bench(args)
    print("\n".join(report(fig)), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=1))
    return 0 if all(ok for _, ok in checks(fig)) else 1


if __name__ == "__main__":
    sys.exit(main())
