"""Evaluation: music metrics (aurl.evaluate.metrics), pictures (aurl.evaluate.plots) and the checkpoint report
(``python -m aurl.evaluate``)."""
