"""Evaluation: music metrics (aurl.evaluate.metrics), pictures (aurl.evaluate.plots) and the model report
(aurl.evaluate.core; CLI ``python -m aurl.evaluate``).

The trainer's end-of-stage call (rank 0 only)::

    from aurl.evaluate import EvalConfig, evaluate_checkpoint
    result = evaluate_checkpoint(best_model_path, cache_dir, EvalConfig(num_samples=4, length=256,
                                 max_val_tokens=20000), out_dir=run_dir / "eval" / stage_name)

Importing this package imports neither torch nor matplotlib.
"""

from aurl.evaluate.core import EvalConfig, evaluate_checkpoint, evaluate_model, format_report
from aurl.evaluate.metrics import METRIC_NAMES, compare_metrics, compute_metrics, distribution_overlap

__all__ = [
    "METRIC_NAMES",
    "EvalConfig",
    "compare_metrics",
    "compute_metrics",
    "distribution_overlap",
    "evaluate_checkpoint",
    "evaluate_model",
    "format_report",
]
