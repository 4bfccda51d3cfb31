"""Evaluation: music metrics (aurl.evaluate.metrics), pictures (aurl.evaluate.plots) and the model report
(aurl.evaluate.core; CLI ``python -m aurl.evaluate``).

The trainer's end-of-stage call (rank 0 only)::

    from aurl.evaluate import evaluate_checkpoint, format_report
    result = evaluate_checkpoint(best_model_path, cache_dir, num_samples=4, length=256, seed=0,
                                 max_val_tokens=20000, out_dir=run_dir / "eval" / stage_name,
                                 losses=run_dir / "logs" / "metrics.jsonl")
    print0(format_report(result))          # the readable table; result["json"] is the JSON report

and for --status: ``latest_eval(run_dir)`` (aurl.evaluate.status) -> the newest report and its PNG paths;
``eval_reports(run_dir)`` -> all of them (e.g. the quality bar's "stage-2 NLL below stage 1's").

Sound: every sample, and a few validation excerpts, rendered to WAV beside its MIDI (aurl.evaluate.audio,
FluidSynth); the whole run on one page, RUN/report.html (aurl.evaluate.report, `python -m aurl.evaluate --report`).

Importing this package imports neither torch nor matplotlib.
"""

from aurl.evaluate.core import EvalConfig, evaluate_checkpoint, evaluate_model, format_report
from aurl.evaluate.metrics import METRIC_NAMES, compare_metrics, compute_metrics, distribution_overlap
from aurl.evaluate.status import eval_reports, latest_eval

__all__ = [
    "METRIC_NAMES",
    "EvalConfig",
    "compare_metrics",
    "compute_metrics",
    "distribution_overlap",
    "eval_reports",
    "evaluate_checkpoint",
    "evaluate_model",
    "format_report",
    "latest_eval",
]
