"""Evaluate a model: validation likelihood, generated samples, music metrics against the data, pictures.

    result = evaluate_checkpoint("outputs/checkpoints/best_model.pt", "outputs/cache", out_dir="outputs/eval")
    print(format_report(result))

What is measured, and why:
- Validation likelihood over the cache's validation pieces, cut into non-overlapping windows of the
  model's context (the window it was trained on, recorded in the model file; the first token of each window is context only; a model with
  model.sounding_embedding is handed the pitches sounding before each window, as generation hands them over). Reported per token (nats), per
  note (nats per NOTE_ON target) and in bits per second of music (total bits / seconds covered by the
  targets' time shifts): per-token numbers only compare models with the same vocabulary, the other two
  compare across vocabularies (Anticipatory Music Transformer's convention).
  transformer: the exact NLL. vae / vae_gan: the negative ELBO, an upper bound on the NLL: CE of the
  decoder given one posterior sample z ~ q(z|window) (seeded by the window's tokens) plus the window's
  KL(q || N(0, I)); both parts are reported. The CE given z alone would be lower than any true NLL because z
  has seen the window. The trainer's validation computes the same figures with the same code
  (aurl.model.elbo), so best.pt is chosen on this number. Also reported: the latent's active units and z-swap
  gap, and (vae_gan) the discriminator's accuracy on real and generated windows.
- Samples: `num_samples` sequences of `length` new tokens after START, sampled with the KV cache (vae: z
  from the prior), grammar-constrained unless `grammar` is False (then the figures measure the model's own
  grammar: --no-grammar). The grammar check runs on the sampled tokens as they are; notes still open when the length cut-off
  stops a sample are counted apart (`unclosed_at_cutoff`), not as errors, unless the sample ended with END.
  Each sample is written as MIDI through aurl.model.sampling.finalize + aurl.vocab.decode (as
  `python -m aurl.generate` does); "valid MIDI" = the file reads back with aurl's reader with >= 1 note.
- Music metrics (aurl.evaluate.metrics) of each sample against excerpts of the validation pieces of the
  same token length (so length-dependent metrics such as pitch range compare like with like); for each:
  the data mean, the samples mean and the overlap of the two distributions. Beat-based metrics refine the
  binned tempo of decoded tokens (metrics.refine_tempo).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aurl import vocab
from aurl.console import UserError, print0
from aurl.evaluate.metrics import METRIC_NAMES, compare_metrics, compute_metrics
from aurl.rundir import RunDir

# half the ratio between neighbouring tempo bins: how far a decoded BPM can be from the original
TEMPO_TOLERANCE = float(np.sqrt(vocab.tempo_of_bin(1) / vocab.tempo_of_bin(0))) - 1.0
# quality bar of the issue for the CPU quickstart
ENTROPY_TOLERANCE_BITS = 0.3
SCALE_TOLERANCE = 0.1


@dataclass
class EvalConfig:
    """What evaluate_model does (the evaluate CLI flags and the trainer's end-of-stage call)."""

    num_samples: int = 8
    """Generated samples (0 = skip generation and the music metrics)."""
    length: int = 512
    """New tokens per sample after START; also the token length of the data excerpts compared with them."""
    seed: int = 0
    """Seed of sampling and of the vae posterior samples of the validation bound."""
    temperature: float = 1.0
    """Sampling temperature (1 = the model's distribution)."""
    top_k: int = 0
    """Sample among the k likeliest tokens (0 = off)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1 = off)."""
    grammar: bool = True
    """Grammar-constrained decoding (aurl.model.sampling); False samples the raw distribution, so the grammar
    figures then measure what the model itself has learned."""
    max_val_tokens: int = 0
    """Cap on validation target tokens (0 = all validation pieces); a small budget for stage ends."""
    batch_size: int = 8
    """Windows per forward pass in the validation pass."""
    max_data_excerpts: int = 256
    """Cap on validation excerpts whose metrics form the data distribution (spread evenly over pieces)."""
    pictures: bool = True
    """Write piano-roll PNGs (and loss curves when loss records are given)."""
    audio: bool = True
    """Render samples and reference excerpts to WAV (aurl.evaluate.audio; skipped with one warning when no
    synthesizer is installed)."""

    def validate(self) -> EvalConfig:
        if self.num_samples < 0:
            raise UserError(f"--num-samples must be >= 0, got {self.num_samples}")
        if self.length < 1:
            raise UserError(f"--length must be >= 1, got {self.length}")
        from aurl.model.sampling import check_sampling_options

        check_sampling_options(self.temperature, self.top_k, self.top_p)
        if self.max_val_tokens < 0:
            raise UserError(f"--max-val-tokens must be >= 0 (0 = all), got {self.max_val_tokens}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {self.batch_size}")
        return self


# ----------------------------------------------------------------------------------------------------------
# Validation likelihood
def _windows(cache, seq_len: int, max_tokens: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Non-overlapping windows (>= 2 tokens) of the validation pieces, each with the pitches sounding before it
    (bool [88]: what model.sounding_embedding is handed, as generation hands it over when its context
    slides); with max_tokens, windows spread evenly over the split (not just its first pieces), the last cut
    so that exactly max_tokens are targets."""
    import torch

    from aurl.model.sounding import sounding_states

    out = []
    for piece in cache.val_pieces:
        toks = np.asarray(cache.tokens(piece)).astype(np.int64)
        states = sounding_states(torch.from_numpy(toks)[None])[0].numpy()
        none = np.zeros(vocab.NUM_PITCHES, dtype=bool)
        out += [(toks[s : s + seq_len], states[s - 1] if s else none) for s in range(0, len(toks) - 1, seq_len)
                if len(toks[s : s + seq_len]) >= 2]
    total = sum(len(w) - 1 for w, _ in out)
    if not max_tokens or total <= max_tokens:
        return out
    k = min(len(out), max(1, math.ceil(max_tokens / (total / len(out)))))
    while True:  # the fewest evenly spread windows that hold max_tokens targets
        picked = [out[i] for i in np.unique(np.linspace(0, len(out) - 1, k).round().astype(int))]
        if sum(len(w) - 1 for w, _ in picked) >= max_tokens or k == len(out):
            break
        k += 1
    kept, targets = [], 0
    for w, before in picked:
        w = w[: max_tokens - targets + 1]
        if len(w) >= 2:
            kept.append((w, before))
            targets += len(w) - 1
        if targets >= max_tokens:
            break
    return kept


def _padded_batches(windows: list[tuple[np.ndarray, np.ndarray]], batch_size: int):
    """(input_ids, loss_mask, pitches sounding before each window) numpy batches."""
    for b in range(0, len(windows), batch_size):
        batch = windows[b : b + batch_size]
        ids = np.full((len(batch), max(len(w) for w, _ in batch)), vocab.PAD_ID, dtype=np.int64)
        for i, (w, _) in enumerate(batch):
            ids[i, : len(w)] = w
        yield ids, ids != vocab.PAD_ID, np.stack([before for _, before in batch])


def likelihood_figures(model, batches, seed: int, device) -> dict:
    """aurl.model.elbo figures (+ notes and seconds of music) of (input_ids, loss_mask[, sounding before])
    numpy batches: the model's phase="validate", which the trainer's validation runs too, so the two report
    the same number."""
    import torch

    from aurl.model.elbo import figures, sum_shapes

    sums = {k: torch.zeros(shape, dtype=torch.float64) for k, shape in sum_shapes(model.cfg).items()}
    notes = steps = 0
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for ids, mask, *before in batches:
            sounding = torch.as_tensor(before[0]).to(device) if before else None
            out = model(torch.as_tensor(ids).to(device), torch.as_tensor(mask).to(device), phase="validate",
                        seed=seed, sounding=sounding)
            for k, v in out.metrics.items():
                sums[k] += v.cpu()
            tgt, tmask = ids[:, 1:], mask[:, 1:] & (ids[:, 1:] != vocab.PAD_ID)
            notes += int(((vocab.KIND_OF_ID[tgt] == vocab.KIND_NAMES.index("note_on")) & tmask).sum())
            steps += int(vocab.shift_steps(tgt)[tmask].sum())
    model.train(was_training)
    return figures(sums, model.cfg.active_unit_threshold) | {"notes": notes, "seconds": steps * vocab.STEP_SECONDS}


def validation_nll(model, cache, cfg: EvalConfig, device, context: int | None = None) -> dict:
    """Likelihood figures of the validation split (see the module docstring); windows of `context` tokens
    (None = max_seq_len)."""
    mcfg = model.cfg
    windows = _windows(cache, min(context or mcfg.max_seq_len, mcfg.max_seq_len), cfg.max_val_tokens)
    if not windows:
        raise UserError(f"the cache in {cache.cache_dir} has no validation pieces to evaluate on "
                        "(rebuild it with --val-fraction > 0)")
    f = likelihood_figures(model, _padded_batches(windows, cfg.batch_size), cfg.seed, device)
    total, tokens, notes, seconds = f["loss"] * f["tokens"], int(f["tokens"]), f["notes"], f["seconds"]
    out = {
        "kind": "elbo_bound" if mcfg.is_vae else "exact",
        "pieces": len(cache.val_pieces),
        "windows": len(windows),
        "tokens": tokens,
        "notes": notes,
        "seconds": seconds,
        "nll_per_token": f["loss"],
        "nll_per_note": total / notes if notes else math.nan,
        "bits_per_second": total / math.log(2) / seconds if seconds > 0 else math.nan,
        "recon_per_token": f["recon"],
        "kl_per_token": f.get("kl", 0.0),
    }
    if mcfg.is_vae:  # the latent: is it used? (aurl.model.elbo)
        out["latent"] = {k: f[k] for k in ("active_units", "latent_dim", "zswap_gap")}
    if mcfg.is_gan:
        out["discriminator"] = {"acc_real": f["d/acc_real"], "acc_fake": f["d/acc_fake"]}
    return out


# ----------------------------------------------------------------------------------------------------------
# Data excerpts and samples
def data_excerpts(cache, length: int, max_excerpts: int) -> list:
    """Decoded excerpts of the validation pieces, each the token length of a sample (START + length).

    Tails shorter than half that are left out. An excerpt from inside a piece starts with the tempo in force
    there (tempo is written only on change) and without its leading time shifts (a sample's first note
    comes right after START, too).
    """
    spans = []
    for piece in cache.val_pieces:
        n = int(piece["length"])
        # a short tail would be an unfair comparison with full-length samples: keep it only if it is all
        spans += [(piece, s) for s in range(0, max(n - 1, 1), length + 1) if s == 0 or n - s > (length + 1) // 2]
    if len(spans) > max_excerpts:  # spread evenly, deterministic
        spans = [spans[i] for i in np.linspace(0, len(spans) - 1, max_excerpts).round().astype(int)]
    out = []
    for piece, s in spans:
        toks = np.asarray(cache.tokens(piece)).astype(np.int64)
        chunk = toks[s : s + length + 1]
        if s > 0:
            tempo = toks[:s][vocab.KIND_OF_ID[toks[:s]] == vocab.KIND_NAMES.index("tempo")]
            kinds = vocab.KIND_OF_ID[chunk]
            lead = int(np.argmax(kinds != vocab.KIND_NAMES.index("time_shift"))) if len(chunk) else 0
            chunk = np.concatenate([tempo[-1:], chunk[lead:]])
        out.append(vocab.decode(chunk))
    return out


def _sample_report(rows: list[list[int]]) -> tuple[dict, list]:
    """Grammar figures of raw sample rows, and the finalized tokens of each row."""
    from aurl.model.sampling import finalize

    totals: dict[str, int] = {}
    cutoff_open = tokens = clean = final_errors = 0
    finalized = []
    for row in rows:
        ended = vocab.END_ID in row
        body = row[: row.index(vocab.END_ID) + 1] if ended else row
        errs = vocab.grammar_errors(body)
        if not ended:  # cut off by the length budget: open notes are not the model's mistake
            cutoff_open += errs.pop("unclosed_notes")
        for k, v in errs.items():
            totals[k] = totals.get(k, 0) + v
        clean += sum(errs.values()) == 0
        tokens += max(1, len(body) - 1)  # generated tokens (START was the prompt)
        fin = finalize(row)
        final_errors += sum(vocab.grammar_errors(fin).values())
        finalized.append(fin)
    n_err = sum(totals.values())
    return {
        "grammar_errors": totals,
        "grammar_error_rate": n_err / max(tokens, 1),
        "grammar_clean_share": clean / max(len(rows), 1),
        "unclosed_at_cutoff": cutoff_open,
        "finalized_grammar_errors": final_errors,
        "generated_tokens": tokens,
    }, finalized


def generate_samples(model, cfg: EvalConfig, device, context: int | None = None) -> list[list[int]]:
    """Raw token rows (START + up to `length` tokens) sampled with the KV cache."""
    import torch

    from aurl.model.sampling import generate, make_generator

    gen = make_generator(cfg.seed, device)
    prompt = torch.full((cfg.num_samples, 1), vocab.START_ID, dtype=torch.long)
    rows = []
    for b in range(0, cfg.num_samples, 16):  # bounded memory for large sample counts
        out = generate(model, prompt[b : b + 16], cfg.length, temperature=cfg.temperature, top_k=cfg.top_k,
                       top_p=cfg.top_p, generator=gen, stop_at_end=False, grammar=cfg.grammar,
                       context=context).cpu()
        for row in out.tolist():
            while row and row[-1] == vocab.PAD_ID:
                row.pop()
            rows.append(row)
    return rows


def _write_and_check(score, path: Path) -> bool:
    from aurl.data.midi_io import MidiReadError, read_midi, write_midi

    try:
        write_midi(score, path)
        return read_midi(path).num_notes > 0
    except (MidiReadError, OSError, ValueError):
        return False


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
        t0 = time.perf_counter()
        rows = generate_samples(model, cfg, device, context)
        timings["generation_s"] = time.perf_counter() - t0
        gen_tokens = sum(len(r) - 1 for r in rows)
        timings["generation_tokens_per_s"] = gen_tokens / max(timings["generation_s"], 1e-9)
        t0 = time.perf_counter()
        report, finalized = _sample_report(rows)
        scores = [vocab.decode(f) for f in finalized]
        valid, files = [], []
        for i, score in enumerate(scores):
            if out is not None:
                path = out / f"sample_{i:03d}.mid"
                valid.append(_write_and_check(score, path))
                files.append(str(path))
            else:
                valid.append(score.num_notes > 0)
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
            pictures.append(str(plot_piano_rolls(
                excerpts[:1] + scores[:k], out / "rolls_data_vs_samples.png",
                ["validation excerpt"] + [f"sample {i}" for i in range(k)])))
        if out is not None:  # listening material: reference excerpts, and WAVs beside the MIDI
            from aurl.evaluate.audio import reference_and_audio

            t0 = time.perf_counter()
            result["listening"] = reference_and_audio(out, files, excerpts, cfg.pictures, cfg.audio)
            timings["listening_s"] = time.perf_counter() - t0
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
    from aurl.data.cache import TokenCache
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


# ----------------------------------------------------------------------------------------------------------
# Readable table
def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def format_report(result: dict) -> str:
    """The result of evaluate_model as a few readable tables."""
    lines = []
    head = f"checkpoint {result.get('checkpoint', '(in memory)')}  mode {result.get('mode')}"
    if result.get("stage") is not None or result.get("step") is not None:
        head += f"  stage {result.get('stage')}  step {result.get('step')}"
    lines.append(head)
    v = result["validation"]
    bound = " (negative ELBO: an upper bound)" if v["kind"] == "elbo_bound" else ""
    lines += [
        f"validation: {v['pieces']} pieces, {v['windows']} windows, {v['tokens']} tokens, {v['notes']} notes, "
        f"{v['seconds']:.1f} s of music{bound}",
        f"  NLL per token    {_fmt(v['nll_per_token'], 4)} nats"
        + (f"   (recon {_fmt(v['recon_per_token'], 4)} + KL {_fmt(v['kl_per_token'], 4)})" if bound else ""),
        *([f"  latent           {v['latent']['active_units']}/{v['latent']['latent_dim']} active units, "
           f"z-swap gap {_fmt(v['latent']['zswap_gap'], 4)} nats/token (> 0: z carries its window)"]
          if v.get("latent") else []),
        *([f"  discriminator    accuracy on real windows {_fmt(v['discriminator']['acc_real'], 2)}, "
           f"on generated {_fmt(v['discriminator']['acc_fake'], 2)}"] if v.get("discriminator") else []),
        f"  NLL per note     {_fmt(v['nll_per_note'], 3)} nats",
        f"  bits per second  {_fmt(v['bits_per_second'], 1)}",
    ]
    s = result.get("samples")
    if s:
        errs = ", ".join(f"{k} {n}" for k, n in s["grammar_errors"].items() if n) or "none"
        lines += [
            f"samples: {s['num']} x {result['eval_config']['length']} tokens (seed {result['eval_config']['seed']}, "
            f"T {result['eval_config']['temperature']})  mean {s['mean_notes']:.0f} notes, {s['mean_seconds']:.1f} s",
            f"  valid MIDI       {s['valid_midi_share'] * 100:.0f} %",
            f"  grammar errors   {s['grammar_error_rate'] * 100:.2f} % of tokens ({errs}"
            f"{'' if result['eval_config'].get('grammar', True) else ', unconstrained sampling'}); "
            f"clean samples {s['grammar_clean_share'] * 100:.0f} %; notes open at the length cut-off "
            f"{s['unclosed_at_cutoff']} (closed in the MIDI)",
            "",
            f"{'metric':<22}{'data':>10}{'samples':>10}{'overlap':>10}",
        ]
        for name in METRIC_NAMES:
            m = result["metrics"][name]
            lines.append(f"{name:<22}{_fmt(m['data']):>10}{_fmt(m['samples']):>10}{_fmt(m['overlap'], 2):>10}")
        lines.append(f"(data: {result['data_excerpts']} validation excerpts of the same token length)")
        bar = result.get("quality_bar", {})
        lines.append("quality bar: " + ", ".join(f"{k} {'yes' if ok else 'NO'}" for k, ok in bar.items()))
    if result.get("pictures"):
        lines.append(f"pictures: {len(result['pictures'])} PNG in {Path(result['pictures'][0]).parent}")
    if result.get("json"):
        lines.append(f"json: {result['json']}")
    return "\n".join(lines)
