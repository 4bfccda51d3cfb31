"""Evaluate a model: validation likelihood, generated samples, music metrics against the data, pictures.

    result = evaluate_checkpoint("outputs/checkpoints/best_model.pt", "outputs/cache", out_dir="outputs/eval")
    print(format_report(result))

What is measured, and where: the validation likelihood (aurl.evaluate.likelihood); samples and the data
excerpts they are compared with (aurl.evaluate.samples); the music metrics (aurl.evaluate.metrics) of each
sample against the excerpts: for each, the data mean, the samples mean and the overlap of the two
distributions (beat-based metrics refine the binned tempo of decoded tokens, metrics.refine_tempo); the
quality bar; pictures (aurl.evaluate.plots) and sound (aurl.evaluate.audio); the tables
(aurl.evaluate.text.format_report).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np

from aurl import codec, vocab
from aurl.console import print0
from aurl.evaluate.config import EvalConfig
from aurl.evaluate.likelihood import validation_nll
from aurl.evaluate.metrics import compare_metrics, compute_metrics
from aurl.evaluate.samples import _sample_report, _write_and_check, data_excerpts, generate_samples
from aurl.rundir import RunDir

# half the ratio between neighbouring tempo bins: how far a decoded BPM can be from the original
TEMPO_TOLERANCE = float(np.sqrt(vocab.tempo_of_bin(1) / vocab.tempo_of_bin(0))) - 1.0
# quality bar of the issue for the CPU quickstart
ENTROPY_TOLERANCE_BITS = 0.3
SCALE_TOLERANCE = 0.1


# ----------------------------------------------------------------------------------------------------------
# The whole report
def evaluate_model(model, cache, cfg: EvalConfig | None = None, out_dir: str | Path | None = None,
                   losses: str | Path | list | None = None, info: dict | None = None,
                   context: int | None = None) -> dict:
    """Evaluate a MusicTransformerVAEGAN (DDP / compile wrappers are looked through) on a TokenCache; write
    files into out_dir if given.

    Runs in this process only (no collectives): call it on rank 0. `losses`: loss records or their source
    (JSONL file / TensorBoard folder) for the loss-curve picture. `info` is copied into the result.
    `context`: the most tokens fed at once (the trained window, aurl.model.checkpoint.context_length;
    None = max_seq_len).
    """
    cfg = (cfg or EvalConfig()).validate()
    if cfg.pictures and out_dir is not None:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is None:  # the `plots` extra is optional
            from aurl.console import warn

            warn("matplotlib is not installed (pip install -e '.[plots]'): no PNG written")
            cfg = dataclasses.replace(cfg, pictures=False)
    from aurl.model.checkpoint import unwrap

    model = unwrap(model)
    device = model.tok_emb.weight.device
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    result: dict = {**(info or {}), "mode": model.cfg.mode, "eval_config": cfg.__dict__.copy(),
                    "cache_fingerprint": getattr(cache, "fingerprint", None)}
    timings = {}

    t0 = time.perf_counter()
    context = min(context or model.cfg.max_seq_len, model.cfg.max_seq_len)
    result["context"] = context
    result["validation"] = validation_nll(model, cache, cfg, device, context)
    timings["validation_s"] = time.perf_counter() - t0

    pictures: list[str] = []
    if cfg.num_samples > 0:
        _samples_and_metrics(model, cache, cfg, device, context, out, result, timings, pictures)
    if out is not None and cfg.pictures and losses is not None:
        from aurl.evaluate.plots import load_loss_records, plot_loss_curves

        records = losses if isinstance(losses, list) else load_loss_records(losses)
        pictures.append(str(plot_loss_curves(records, out / "loss_curves.png")))
    result["pictures"] = pictures
    result["timings"] = timings
    return result


def evaluate_checkpoint(checkpoint: str | Path, cache_dir: str | Path | None = None,
                        cfg: EvalConfig | None = None, out_dir: str | Path | None = None,
                        json_path: str | Path | None = None, losses: str | Path | None = None,
                        device: str = "auto", *, num_samples: int | None = None, length: int | None = None,
                        seed: int | None = None, max_val_tokens: int | None = None) -> dict:
    """Load a model file (aurl.model.checkpoint) and evaluate it; write JSON, MIDI and PNGs.

    num_samples / length / seed / max_val_tokens, when given, override those fields of cfg.

    RUN below is the run folder the file lies in (aurl.rundir.RunDir.holding: RUN/checkpoints/X.pt or
    RUN/checkpoints/stageN/X.pt). cache_dir None: RUN/cache (outputs/cache for a file outside a run).
    out_dir None: RUN/eval/<file stem> (else <the file's folder>/eval/<file stem>). json_path None:
    out_dir/eval.json. losses None: RUN/logs/metrics.jsonl (else logs/losses.jsonl, else logs/tensorboard),
    if any.
    """
    from aurl.atomic import atomic_write_json
    from aurl.data.token_cache import TokenCache
    from aurl.model.checkpoint import context_length, load_model_file, resolve_device
    from aurl.model.sampling import context_note

    overrides = {k: v for k, v in (("num_samples", num_samples), ("length", length), ("seed", seed),
                                   ("max_val_tokens", max_val_tokens)) if v is not None}
    if overrides:
        cfg = dataclasses.replace(cfg or EvalConfig(), **overrides)
    cfg = (cfg or EvalConfig()).validate()  # bad values fail before the model is loaded
    checkpoint = Path(checkpoint)
    model, mcfg, meta = load_model_file(checkpoint, map_location=resolve_device(device))
    run = RunDir.holding(checkpoint)
    cache_path = Path(cache_dir) if cache_dir is not None else (run or RunDir("outputs")).cache()
    cache = TokenCache.open(cache_path)
    if out_dir is None:
        out_dir = (run or RunDir(checkpoint.resolve().parent)).eval(checkpoint.stem)
    info = {"checkpoint": str(checkpoint), "cache": str(cache_path), "step": (meta.get("extra") or {}).get("step"),
            "stage": (meta.get("extra") or {}).get("stage"), "num_parameters": meta.get("num_parameters")}
    context = context_length(mcfg, meta)
    print0(context_note(context, mcfg.max_seq_len))
    if losses is None and run is not None:
        losses = run.loss_records()
    result = evaluate_model(model, cache, cfg, out_dir, losses, info, context=context)
    result["json"] = str(Path(json_path) if json_path is not None else Path(out_dir) / "eval.json")
    atomic_write_json(result["json"], _jsonable(result))
    return result


def _samples_and_metrics(model, cache, cfg: EvalConfig, device, context: int, out: Path | None, result: dict,
                         timings: dict, pictures: list[str]) -> None:
    """evaluate_model's samples: generated, checked, written as MIDI (into out); their metrics against the
    data excerpts, the quality bar, their pictures and sound. Fills result, timings and pictures."""
    t0 = time.perf_counter()
    rows = generate_samples(model, cfg, device, context)
    timings["generation_s"] = time.perf_counter() - t0
    timings["generation_tokens_per_s"] = sum(len(r) - 1 for r in rows) / max(timings["generation_s"], 1e-9)
    t0 = time.perf_counter()
    report, finalized = _sample_report(rows)
    scores = [codec.decode(f) for f in finalized]
    files = [str(out / f"sample_{i:03d}.mid") for i in range(len(scores))] if out is not None else []
    valid = ([_write_and_check(score, Path(f)) for score, f in zip(scores, files, strict=True)] if out is not None
             else [score.num_notes > 0 for score in scores])
    report.update({
        "num": len(rows),
        "valid_midi_share": sum(valid) / len(rows),
        "mean_notes": float(np.mean([s.num_notes for s in scores])),
        "mean_seconds": float(np.mean([s.duration for s in scores])),
        "files": files,
    })
    result["samples"] = report
    excerpts = data_excerpts(cache, cfg.length, cfg.max_data_excerpts)
    data_m = [compute_metrics(s, tempo_tolerance=TEMPO_TOLERANCE) for s in excerpts]
    samp_m = [compute_metrics(s, tempo_tolerance=TEMPO_TOLERANCE) for s in scores]
    result["metrics"] = compare_metrics(data_m, samp_m)
    report["metrics"] = samp_m  # per sample, for the trackers' sample table and the run report
    result["data_excerpts"] = len(excerpts)
    timings["metrics_s"] = time.perf_counter() - t0
    ent, scale = result["metrics"]["pitch_class_entropy"], result["metrics"]["scale_consistency"]
    result["quality_bar"] = {
        "all_valid_midi": report["valid_midi_share"] == 1.0,
        "zero_grammar_errors": sum(report["grammar_errors"].values()) == 0,
        "entropy_within_0.3_bits": bool(abs(ent["samples"] - ent["data"]) <= ENTROPY_TOLERANCE_BITS),
        "scale_consistency_within_0.1": bool(abs(scale["samples"] - scale["data"]) <= SCALE_TOLERANCE),
    }
    if out is not None and cfg.pictures:
        from aurl.evaluate.plots import plot_metric_distributions, plot_piano_roll, plot_piano_rolls

        pictures.append(str(plot_metric_distributions(data_m, samp_m, out / "metrics.png", result["metrics"])))
        for i, score in enumerate(scores):
            pictures.append(str(plot_piano_roll(score, out / f"sample_{i:03d}.png", f"sample {i}")))
        k = min(3, len(scores))
        pictures.append(str(plot_piano_rolls(excerpts[:1] + scores[:k], out / "rolls_data_vs_samples.png",
                                             ["validation excerpt"] + [f"sample {i}" for i in range(k)])))
    if out is not None:  # listening material: reference excerpts, and WAVs beside the MIDI
        from aurl.evaluate.audio import reference_and_audio

        t0 = time.perf_counter()
        result["listening"] = reference_and_audio(out, files, excerpts, cfg.pictures, cfg.audio)
        timings["listening_s"] = time.perf_counter() - t0


def _jsonable(x):
    """NaN/inf -> None (strict JSON), numpy scalars -> Python."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x
