"""`python -m aurl.data build|info`: build (or update) the token cache and print its summary.

Exit codes: 0 done, 2 bad input (missing folder, no usable MIDI file, no cache), 130 interrupted (what was
already tokenized is kept; the next build goes on from there).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from aurl.console import PREFIX, ArgParser, UserError, print0, report_error
from aurl.rundir import RunDir


def _parser() -> argparse.ArgumentParser:
    p = ArgParser(prog="python -m aurl.data", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="tokenize a MIDI folder (default: the bundled Bach chorales) into a cache")
    b.add_argument("--data", default=None, help="folder of .mid/.midi files, searched recursively (default: Bach)")
    b.add_argument("--output-dir", default="outputs", help="run output folder; the cache defaults to DIR/cache")
    b.add_argument("--cache", default=None, help="cache folder (default: OUTPUT_DIR/cache)")
    b.add_argument("--workers", type=int, default=None, help="reader processes (default: all cores; 0 = in-process)")
    b.add_argument("--val-fraction", type=float, default=0.05, help="share of pieces in validation, in [0, 1)")
    b.add_argument("--seed", type=int, default=0, help="seed of the train/validation split")
    b.add_argument("--timeout", type=float, default=60.0, help="seconds one file may take before it is skipped")
    b.add_argument("--corpus-limit", type=int, default=None, help="only the first N Bach chorales (quick runs)")
    b.add_argument("--no-progress", action="store_true", help="no progress bar")
    i = sub.add_parser("info", help="print the summary of an existing cache")
    i.add_argument("--cache", default="outputs/cache", help="cache folder")
    i.add_argument("--json", action="store_true", help="print the manifest's summary as JSON")
    i.add_argument("--variety", action="store_true",
                   help="also report distinct training windows per piece with the default augmentation")
    i.add_argument("--seq-len", type=int, default=1024, help="window length for --variety, tokens")
    i.add_argument("--epochs", type=int, default=5, help="epochs counted by --variety")
    return p


def _check_numbers(args) -> None:
    """Range checks of the numeric flags, before any work (argparse checks only their type)."""
    if args.command == "build":
        checks = (("--val-fraction", args.val_fraction, "in [0, 1)", 0 <= args.val_fraction < 1),
                  ("--workers", args.workers, ">= 0", args.workers is None or args.workers >= 0),
                  ("--timeout", args.timeout, "> 0 seconds", args.timeout > 0),
                  ("--corpus-limit", args.corpus_limit, ">= 2", args.corpus_limit is None or args.corpus_limit >= 2))
    else:
        checks = (("--seq-len", args.seq_len, ">= 2", args.seq_len >= 2),
                  ("--epochs", args.epochs, ">= 1", args.epochs >= 1))
    for flag, value, want, ok in checks:
        if not ok:
            raise UserError(f"{flag} must be {want}, got {value}")


def _build(args) -> None:
    from aurl.data.cache import build

    cache = str(RunDir(args.output_dir).cache(args.cache))
    data = args.data
    if data is None:
        from aurl.data.corpus import default_corpus_dir, ensure_bach_midi

        out = default_corpus_dir()
        if args.corpus_limit is not None:
            out = out.with_name(f"{out.name}_first{args.corpus_limit}")
        data = ensure_bach_midi(out, limit=args.corpus_limit, workers=args.workers, progress=not args.no_progress)
    elif not Path(data).is_dir():
        raise UserError(f"--data: folder not found: {data}")
    summary = build(
        data, cache, val_fraction=args.val_fraction, split_seed=args.seed, workers=args.workers,
        timeout_s=args.timeout, progress=not args.no_progress,
    )
    for line in summary.format().splitlines():
        print0(line)


def _info(args) -> None:
    from aurl.data.token_cache import TokenCache, format_note_stats, total_note_stats

    tc = TokenCache.open(args.cache)
    m = tc.manifest
    info = {
        "cache": str(args.cache),
        "fingerprint": tc.fingerprint,
        "vocab_hash": tc.vocab_hash,
        "options": m["options"],
        "pieces": len(tc.pieces),
        "tokens": sum(p["length"] for p in tc.pieces),
        "train_pieces": len(tc.train_pieces),
        "val_pieces": len(tc.val_pieces),
        "train_tokens": sum(p["length"] for p in tc.train_pieces),
        "val_tokens": sum(p["length"] for p in tc.val_pieces),
        "hours": round(sum(p["duration_s"] for p in tc.pieces) / 3600, 3),
        "notes": total_note_stats(tc.pieces),
        "skipped": {s["path"]: s["reason"] for s in m["skipped"]},
    }
    if args.variety:
        from aurl.config import DataConfig
        from aurl.data.augment import AugmentConfig
        from aurl.data.dataset import WindowDataset

        ds = WindowDataset(tc, "train", seq_len=args.seq_len, augment=AugmentConfig(enabled=True),
                           start_share=DataConfig.start_share)
        info["variety"] = ds.variant_report(epochs=args.epochs)
    if args.json:  # per file too: what the vocabulary kept, merged, cut and left out of each
        info["notes_per_file"] = {p["path"]: p["stats"] for p in tc.pieces}
        print(json.dumps(info, indent=2))
        return
    for k, v in info.items():
        if k == "variety":
            coverage = v.pop("coverage")
            print0(f"{k}: {v}")
            for name, c in coverage.items():  # what each transform really did, next to what it was set to
                print0(f"  {name:<10} configured {c['configured']:.2f}  changed {c['changed']:.3f} of windows")
        elif k == "notes":
            print0(f"notes: {format_note_stats(v)}")
        elif k != "skipped":
            print0(f"{k}: {v}")
    print0(f"skipped files: {len(info['skipped'])}")
    for path, reason in info["skipped"].items():
        print0(f"  {path}: {reason}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _check_numbers(args)
        _build(args) if args.command == "build" else _info(args)
    except UserError as e:
        return report_error(e)
    except KeyboardInterrupt:
        print(f"{PREFIX} interrupted: what was tokenized is kept; run the build again to continue",
              file=sys.stderr, flush=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
