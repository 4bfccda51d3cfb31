"""`python -m aurl.evaluate --checkpoint PATH`: validation likelihood, samples and music metrics of a model.

Prints a readable table and writes OUT/eval.json, OUT/sample_NNN.mid, their audio (sample_NNN.wav, when
FluidSynth is installed), piano-roll PNGs (plus loss curves when the run's logs are found) and validation
excerpts to compare with (OUT/reference/). `--report` (re)writes the run's RUN/report.html (aurl.evaluate.report),
after the evaluation if a checkpoint is given, else from the files already there.
Exit codes: 0 done, 2 bad input (missing file, no cache, bad flag value, nothing to report).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aurl.console import ArgParser, UserError, check_writable_folder, print0, report_error
from aurl.rundir import RunDir


def _parser() -> argparse.ArgumentParser:
    from aurl.evaluate.config import EvalConfig

    d = EvalConfig()
    p = ArgParser(prog="python -m aurl.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="model file (e.g. outputs/checkpoints/best_model.pt); required unless --report")
    p.add_argument("--cache", type=Path, default=None,
                   help="token cache folder (default: RUN/cache, RUN = the run folder of a file in RUN/checkpoints/ "
                        "or RUN/checkpoints/stageN/; else outputs/cache)")
    p.add_argument("--num-samples", type=int, default=d.num_samples, help="generated samples (0 = none)")
    p.add_argument("--length", type=int, default=d.length, help="new tokens per sample after START")
    p.add_argument("--seed", type=int, default=d.seed, help="sampling seed (same seed, same report)")
    p.add_argument("--temperature", type=float, default=d.temperature, help="sampling temperature (0 = greedy)")
    p.add_argument("--top-k", type=int, default=d.top_k, help="sample among the k likeliest tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=d.top_p, help="nucleus mass (1 = off)")
    p.add_argument("--max-val-tokens", type=int, default=d.max_val_tokens,
                   help="cap on validation target tokens (0 = the whole validation split)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="validation windows per forward pass")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: RUN/eval/<checkpoint name>)")
    p.add_argument("--json", type=Path, default=None, help="JSON report path (default: OUT/eval.json)")
    p.add_argument("--losses", type=Path, default=None,
                   help="loss records for the loss-curve PNG: a TensorBoard folder or a JSONL file "
                        "(default: RUN/logs/metrics.jsonl, logs/losses.jsonl or logs/tensorboard)")
    p.add_argument("--no-grammar", action="store_true",
                   help="sample the raw distribution instead of grammar-constrained decoding (measures the "
                        "grammar the model itself has learned)")
    p.add_argument("--no-pictures", action="store_true", help="write no PNG")
    p.add_argument("--no-audio", action="store_true", help="render no WAV (default: render when FluidSynth is found)")
    p.add_argument("--report", action="store_true",
                   help="write RUN/report.html: the run's loss curves, evaluations, samples to hear and configs")
    p.add_argument("--run-dir", type=Path, default=None,
                   help="the run folder of --report (default: the checkpoint's RUN, else outputs)")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda[:i]")
    return p


def _check_losses(path: Path) -> None:
    """--losses names a JSONL file or a TensorBoard folder that exists (a missing one would silently give no
    loss curve)."""
    if not path.exists():
        raise UserError(f"--losses {path}: no such file or folder")
    if path.is_file():
        try:
            path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"--losses {path}: not a JSONL text file (byte {e.start}: {e.reason})") from e


def main(argv: list[str] | None = None) -> int:
    from aurl.evaluate.config import EvalConfig
    from aurl.evaluate.core import evaluate_checkpoint
    from aurl.evaluate.text import format_report

    parser = _parser()
    args = parser.parse_args(argv)
    if args.checkpoint is None and not args.report:
        parser.error("give --checkpoint (evaluate a model) and/or --report")  # one line, exit code 2
    try:
        if args.out is not None:
            check_writable_folder("--out", args.out)
        if args.json is not None:
            check_writable_folder("--json", args.json.parent)
        if args.losses is not None:
            _check_losses(args.losses)
        if args.checkpoint is not None:
            cfg = EvalConfig(num_samples=args.num_samples, length=args.length, seed=args.seed,
                             temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                             max_val_tokens=args.max_val_tokens, batch_size=args.batch_size,
                             grammar=not args.no_grammar, pictures=not args.no_pictures,
                             audio=not args.no_audio).validate()
            result = evaluate_checkpoint(args.checkpoint, args.cache, cfg, out_dir=args.out, json_path=args.json,
                                         losses=args.losses, device=args.device)
            for line in format_report(result).splitlines():
                print0(line)
        if args.report:
            from aurl.evaluate.report import write_report

            print0(f"report: {write_report(args.run_dir or _run_of(args.checkpoint))}")
    except UserError as e:
        return report_error(e)
    return 0


def _run_of(checkpoint: Path | None) -> Path:
    """The run folder a model file belongs to (aurl.rundir.RunDir.holding), else outputs."""
    run = RunDir.holding(checkpoint) if checkpoint is not None else None
    return run.root if run is not None else Path("outputs")


if __name__ == "__main__":
    sys.exit(main())
