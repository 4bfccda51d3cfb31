"""Evaluation of a model file: validation likelihood (aurl.evaluate.likelihood), samples against the data
(aurl.evaluate.samples), music metrics (aurl.evaluate.metrics), pictures (aurl.evaluate.plots), tables
(aurl.evaluate.text); tied together by aurl.evaluate.core; CLI ``python -m aurl.evaluate``.

After each completed stage the trainer evaluates the stage's best model on rank 0
(aurl.train.pipeline.evaluate_stage)::

    result = evaluate_checkpoint(run.best(stage), run.cache(cfg.data.cache_dir), eval_cfg, out_dir=run.eval(stage))
    print0(format_report(result))          # the readable table; result["json"] is the JSON report

and for --status: ``latest_eval(run_dir)`` (aurl.evaluate.status) -> the newest report and its PNG paths;
``eval_reports(run_dir)`` -> all of them (e.g. the quality bar's "stage-2 NLL below stage 1's").

Sound: every sample, and a few validation excerpts, rendered to WAV beside its MIDI (aurl.evaluate.audio,
FluidSynth); the whole run on one page, RUN/report.html (aurl.evaluate.report, `python -m aurl.evaluate --report`).

Importing this package imports neither torch nor matplotlib.
"""

from aurl.evaluate.config import EvalConfig
from aurl.evaluate.core import evaluate_checkpoint, evaluate_model
from aurl.evaluate.metrics import METRIC_NAMES, compare_metrics, compute_metrics, distribution_overlap
from aurl.evaluate.status import eval_reports, latest_eval
from aurl.evaluate.text import format_report

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
