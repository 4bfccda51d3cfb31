"""Peer comparison (not a test): aurl's stage 1 against a Llama-style model on MidiTok REMI tokens of the same
pieces, trained the same way, both sides in one run, scored in nats per note on the same validation pieces.

    python bench/bench_peer.py [--config configs/training_configs/quickstart/stage1.yaml] [--steps N]
                               [--corpus-limit N] [--batch-size N] [--device cpu|cuda]

aurl: the real trainer, `python -m aurl.train --stage 1 --config <config>` (its windows, sampler, loop and
best-model choice; only the stage-end evaluation, trackers and periodic checkpoints are off), then its best
model (checkpoints/stage1/best.pt) scored here.
Peer: transformers' LlamaForCausalLM (RoPE, RMSNorm, SwiGLU, tied embeddings) with the stage's width, depth,
heads and context; its feed-forward size is picked so that its parameter count matches aurl's (within 15 %).
MidiTok REMI (programs, tempos; one token stream per piece, BOS ... EOS like aurl's START ... END) of the very
files of aurl's train and validation split. Trained here with what the trainer uses: the same number of
optimizer steps (what aurl ran), batch, accumulation, sequence length, AdamW (betas, weight decay on matrices
only), warm-up + cosine schedule (aurl.train.schedule.lr_at), gradient clipping and seed; windows cut as
aurl's loader did before its state prefix (ceil(length / seq_len) windows per piece and epoch, each at a
uniform start); no dropout (Llama has none in its residual path). Its best model is chosen like aurl's: the
best validation value at the steps where aurl validated.
Scoring, identical on both sides: every validation piece in windows of the model's context that overlap by
one token, so each token after the piece's first is predicted exactly once; total nats / the number of notes
in the piece's MIDI file (symusic), the same denominator for both tokenizations; also per note that each
side's tokens hold (aurl merges a pitch sounding in two voices at once into one note, REMI keeps both).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "configs" / "training_configs" / "quickstart" / "stage1.yaml"
PARAM_TOLERANCE = 0.15


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="aurl stage-1 YAML (default: the quickstart)")
    p.add_argument("--steps", type=int, default=0, help="optimizer steps (0 = the config's own schedule)")
    p.add_argument("--corpus-limit", type=int, default=0, help="use only the first N bundled chorales (0 = the config's)")
    p.add_argument("--batch-size", type=int, default=0, help="windows per batch on both sides (0 = the config's)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ aurl side
def train_aurl(config: Path, out: Path, cache: Path, overrides: list[str], device: str) -> tuple[dict, list[int], float]:
    """The real trainer, stage 1; -> (its state entry, the steps it validated at, wall seconds)."""
    cmd = [sys.executable, "-m", "aurl.train", "--stage", "1", "--config", str(config), "--output-dir", str(out),
           "--tracker", "none", "eval.enabled=false", "logging.progress_bar=false", "checkpoint.every_steps=0",
           f"data.cache_dir={cache}", *overrides]
    env = {**os.environ, "WANDB_MODE": "disabled"}
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"aurl.train failed ({r.returncode}):\n{r.stderr[-3000:]}")
    seconds = time.perf_counter() - t0
    entry = json.loads((out / "training_state.json").read_text())["stages"]["1"]
    val_steps = sorted({json.loads(line)["step"] for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()
                        if json.loads(line)["split"] == "val"})
    return entry, val_steps, seconds


def aurl_logits(model):
    return lambda ids: model.decode(ids)


# ------------------------------------------------------------------------------------------------ peer side
def remi_tokenizer():
    from miditok import REMI, TokenizerConfig

    return REMI(TokenizerConfig(use_programs=True, use_tempos=True, one_token_stream_for_programs=True))


def remi_sequences(tokenizer, files: list[Path]) -> tuple[list[np.ndarray | None], int]:
    """BOS + REMI ids + EOS per file (None where MidiTok fails), and the number of failures."""
    bos, eos = tokenizer["BOS_None"], tokenizer["EOS_None"]
    out, failed = [], 0
    for f in files:
        try:
            seq = tokenizer.encode(f)
            ids = seq.ids if not isinstance(seq, list) else [i for s in seq for i in s.ids]
            out.append(np.array([bos, *ids, eos], dtype=np.int64))
        except Exception:  # noqa: BLE001 -- counted and reported, like aurl's skips
            out.append(None)
            failed += 1
    return out, failed


def llama_for(aurl_cfg, vocab_size: int, target_params: int):
    """LlamaForCausalLM of aurl's width/depth/heads/context; the feed-forward size (a multiple of 8) whose
    parameter count is nearest aurl's."""
    from transformers import LlamaConfig, LlamaForCausalLM

    d, layers = aurl_cfg.d_model, aurl_cfg.n_layers
    # per layer: 4 d^2 attention + 3 d I SwiGLU + 2 d norms; plus embeddings (tied) and the final norm
    fixed = vocab_size * d + layers * (4 * d * d + 2 * d) + d
    ffn = max(8, round((target_params - fixed) / (3 * d * layers) / 8) * 8)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=d, num_hidden_layers=layers,
                      num_attention_heads=aurl_cfg.n_heads, num_key_value_heads=aurl_cfg.n_heads,
                      intermediate_size=ffn, max_position_embeddings=aurl_cfg.max_seq_len,
                      rope_theta=aurl_cfg.rope_base, rms_norm_eps=1e-6, tie_word_embeddings=True,
                      attention_dropout=0.0, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return LlamaForCausalLM(cfg), ffn


def train_windows(seqs: list[np.ndarray], seq_len: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of windows in a random order: ceil(n / seq_len) per piece, each at a uniform start."""
    wins = []
    for s in seqs:
        last = max(0, len(s) - seq_len)
        for _ in range(max(1, -(-len(s) // seq_len))):
            start = int(rng.integers(0, last + 1))
            wins.append(s[start : start + seq_len])
    return [wins[i] for i in rng.permutation(len(wins))]


def pad_batch(windows: list[np.ndarray], width: int, pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = np.full((len(windows), width), pad, dtype=np.int64)
    mask = np.zeros((len(windows), width), dtype=bool)
    for i, w in enumerate(windows):
        ids[i, : len(w)], mask[i, : len(w)] = w, True
    return torch.from_numpy(ids), torch.from_numpy(mask)


def train_peer(model, seqs, cfg, steps: int, total_steps: int, eval_steps: list[int], score, device) -> tuple[dict, int, float]:
    """The stage's optimizer and schedule for `steps` steps; evaluated at eval_steps, the best state kept.
    -> (best state dict, its step, wall seconds)."""
    from aurl.train.schedule import lr_at, set_lr
    from aurl.train.trainer import _adamw

    o, d = cfg.optim, cfg.data
    model.to(device).train()
    opt = _adamw(model.parameters(), o.lr, o)
    rng = np.random.default_rng(cfg.train.seed)
    pad = model.config.pad_token_id
    windows: list[np.ndarray] = []
    best, best_val, best_step = None, math.inf, 0
    t0 = time.perf_counter()
    for step in range(steps):
        set_lr(opt, lr_at(step, o.lr, o.warmup_steps, total_steps, o.min_lr_ratio))
        opt.zero_grad(set_to_none=True)
        for _ in range(o.grad_accum):
            if len(windows) < d.batch_size:  # a new epoch (the rest of the last one is dropped, as aurl does)
                windows = train_windows(seqs, d.seq_len, rng)
            batch, windows = windows[: d.batch_size], windows[d.batch_size :]
            ids, mask = (t.to(device) for t in pad_batch(batch, d.seq_len, pad))
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            tgt, tmask = ids[:, 1:], mask[:, 1:]
            ce = F.cross_entropy(logits.transpose(1, 2), tgt, reduction="none")
            loss = (ce * tmask).sum() / tmask.sum().clamp_min(1)
            (loss / o.grad_accum).backward()
        if o.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        opt.step()
        if step + 1 in eval_steps or step + 1 == steps:
            val = score(model)
            print(f"  peer step {step + 1}/{steps}: train loss {float(loss.detach()):.4f}, validation {val:,.1f} nats "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
            if val < best_val:
                best_val, best_step = val, step + 1
                best = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.train()
    return best, best_step, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------- scoring
@torch.no_grad()
def total_nats(logits_fn, seqs: list[np.ndarray], context: int, pad: int, device, batch: int = 16) -> tuple[float, int]:
    """Sum of -log p over every token after each sequence's first, each predicted once (windows of `context`
    tokens overlapping by one); -> (nats, tokens scored)."""
    windows = [s[a : a + context] for s in seqs for a in range(0, max(1, len(s) - 1), context - 1)]
    windows = [w for w in windows if len(w) >= 2]
    nats, count = 0.0, 0
    for b in range(0, len(windows), batch):
        ids, mask = (t.to(device) for t in pad_batch(windows[b : b + batch], context, pad))
        logits = logits_fn(ids)[:, :-1].float()
        tmask = mask[:, 1:]
        ce = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        nats += float((ce * tmask).sum())
        count += int(tmask.sum())
    assert count == sum(len(s) - 1 for s in seqs), "a token scored twice or not at all"
    return nats, count


def midi_notes(path: Path) -> int:
    import symusic

    return int(symusic.Score(str(path)).note_num())


# ------------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    from aurl import vocab
    from aurl.config import load_config
    from aurl.data.token_cache import TokenCache
    from aurl.model.checkpoint import load_model_file

    device = torch.device(args.device)
    overrides = ([f"train.max_steps={args.steps}", "train.epochs=1000"] if args.steps else []) + \
                ([f"data.corpus_limit={args.corpus_limit}"] if args.corpus_limit else []) + \
                ([f"data.batch_size={args.batch_size}"] if args.batch_size else [])
    cfg = load_config(args.config, overrides)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads; config {args.config}")
    with tempfile.TemporaryDirectory(prefix="bench_peer_") as tmp:
        tmp = Path(tmp)
        entry, val_steps, aurl_s = train_aurl(args.config, tmp / "run", tmp / "cache", overrides, args.device)
        print(f"aurl trained: {entry['step']} steps in {aurl_s:.0f} s; the peer now", flush=True)
        cache = TokenCache.open(tmp / "cache")
        data_dir = Path(cache.manifest["options"]["data_dir"])
        model, _, meta = load_model_file(tmp / "run" / "checkpoints" / "stage1" / "best.pt", map_location=device)
        aurl_params = sum(p.numel() for p in model.parameters())

        # the same pieces on both sides; validation scored on those both tokenizers read
        tok = remi_tokenizer()
        train_remi, train_failed = remi_sequences(tok, [data_dir / p["path"] for p in cache.train_pieces])
        val_remi, val_failed = remi_sequences(tok, [data_dir / p["path"] for p in cache.val_pieces])
        val = [(p, r) for p, r in zip(cache.val_pieces, val_remi, strict=True) if r is not None]
        val_aurl = [np.asarray(cache.tokens(p)).astype(np.int64) for p, _ in val]
        val_peer = [r for _, r in val]
        notes = sum(midi_notes(data_dir / p["path"]) for p, _ in val)
        ctx = cfg.model.max_seq_len

        aurl_nats, aurl_tokens = total_nats(aurl_logits(model), val_aurl, ctx, vocab.PAD_ID, device)
        torch.manual_seed(cfg.train.seed)
        peer, ffn = llama_for(cfg.model, len(tok), aurl_params)
        peer_params = sum(p.numel() for p in peer.parameters())
        pad = peer.config.pad_token_id

        def peer_score(m) -> float:
            m.eval()
            return total_nats(lambda ids: m(input_ids=ids, attention_mask=ids != pad).logits, val_peer, ctx, pad,
                              device)[0]

        steps, total = entry["step"], entry["total_steps"]
        best, best_step, peer_s = train_peer(peer, [s for s in train_remi if s is not None], cfg, steps, total,
                                             val_steps, peer_score, device)
        peer.load_state_dict(best)
        peer_nats, peer_tokens = total_nats(lambda ids: peer(input_ids=ids, attention_mask=ids != pad).logits,
                                            val_peer, ctx, pad, device)
    aurl_notes_in_tokens = int(sum((vocab.KIND_OF_ID[s] == vocab.KIND_NAMES.index("note_on")).sum() for s in val_aurl))
    peer_notes_in_tokens = sum(sum(tok[int(i)].startswith("Pitch_") for i in s) for s in val_peer)
    o, d = cfg.optim, cfg.data
    print(f"{steps} optimizer steps (schedule of {total}) x batch {d.batch_size} x accumulation {o.grad_accum} x "
          f"{d.seq_len} tokens; AdamW lr {o.lr:g}, betas ({o.beta1}, {o.beta2}), weight decay {o.weight_decay}, "
          f"warm-up {o.warmup_steps}, cosine to {o.min_lr_ratio:g} x lr, clip {o.grad_clip:g}; seed {cfg.train.seed}")
    print(f"pieces: {len(cache.train_pieces)} train, {len(cache.val_pieces)} validation ({len(val)} scored, "
          f"{notes:,} notes in their MIDI files); MidiTok could not read {train_failed} train / {val_failed} val files")
    print(f"width {cfg.model.d_model}, depth {cfg.model.n_layers}, heads {cfg.model.n_heads}, context {ctx}; "
          f"Llama feed-forward {ffn} (aurl's MLP {cfg.model.d_ff})")
    print()
    print(f"{'side':34s}{'params':>11s}{'vocab':>7s}{'val tokens':>12s}{'notes in tokens':>17s}"
          f"{'nats/token':>12s}{'nats/note':>11s}{'per own note':>14s}{'best step':>11s}{'train s':>9s}")
    rows = [("aurl stage 1 (aurl tokens)", aurl_params, vocab.VOCAB_SIZE, aurl_tokens, aurl_notes_in_tokens,
             aurl_nats, meta["extra"].get("step", "?"), aurl_s),
            ("Llama + MidiTok REMI (transformers)", peer_params, len(tok), peer_tokens, peer_notes_in_tokens,
             peer_nats, best_step, peer_s)]
    for name, params, vsize, tokens, nt, nats, bstep, secs in rows:
        print(f"{name:34s}{params:>11,}{vsize:>7,}{tokens:>12,}{nt:>17,}{nats / tokens:>12.4f}{nats / notes:>11.4f}"
              f"{nats / max(nt, 1):>14.4f}{bstep!s:>11s}{secs:>9.0f}")
    print("nats/note divides by the notes of the MIDI files (the same for both); 'per own note' by the notes "
          "each side's tokens hold (a tokenization that drops notes has fewer to predict)")
    ratio = aurl_nats / peer_nats
    print(f"\nnats/note aurl / peer = {ratio:.4f} ({'aurl ahead' if ratio < 1 else 'peer ahead'} by "
          f"{abs(1 - ratio) * 100:.1f} %); parameters aurl / peer = {aurl_params / peer_params:.3f} "
          f"(must be within {PARAM_TOLERANCE:.0%})")
    if abs(peer_params / aurl_params - 1) > PARAM_TOLERANCE:
        print(f"error: the peer's parameter count is not within {PARAM_TOLERANCE:.0%} of aurl's", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
