"""The validation likelihood of a model file: NLL per token, per note and in bits per second of music.

The cache's validation pieces are cut into non-overlapping windows of the model's context (the window it was
trained on, recorded in the model file; the first token of each window is context only; a model with
model.sounding_embedding is handed the pitches sounding before each window, as generation hands them over).
Per-token numbers only compare models with the same vocabulary; per note (nats per NOTE_ON target) and bits
per second (total bits / seconds covered by the targets' time shifts) compare across vocabularies
(Anticipatory Music Transformer's convention).

transformer: the exact NLL. vae / vae_gan: the negative ELBO, an upper bound on the NLL: CE of the decoder
given one posterior sample z ~ q(z|window) (seeded by the window's tokens) plus the window's KL(q || N(0, I));
both parts are reported. The CE given z alone would be lower than any true NLL because z has seen the window.
The trainer's validation computes the same figures with the same code (aurl.model.elbo), so best.pt is chosen
on this number. Also reported: the latent's active units and z-swap gap, and (vae_gan) the discriminator's
accuracy on real and generated windows.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from aurl import vocab
from aurl.console import UserError

if TYPE_CHECKING:
    from aurl.evaluate.config import EvalConfig


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
