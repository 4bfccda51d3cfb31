"""Model benchmark (not a test): KV-cache generation speed-up and training throughput per stage size.

    python bench/bench_model.py [--gen-tokens 1024] [--gen-size stage1_base] [--gen-rounds 3] [--batch 4]
                                [--steps 3] [--device cpu]

Prints, in one run on this machine:
- generation: tokens/s sampling --gen-tokens tokens (batch 1, grammar on): the compiled one-token step, the
  eager step and no KV cache (the baseline: every token a full pass), side by side (targets: >= 1,000
  tokens/s, cache speed-up >= 10x at 1,024 tokens); every way must produce the same tokens;
- training: forward+backward tokens/s for each stage's model (transformer / vae / vae_gan; vae_gan counts
  the generator and the discriminator pass of one step), at the stage's size and sequence length.
Stage sizes come from configs/training_configs/stage*.yaml (the `model:` section) when present, else the
defaults below (the seed's progression: small stage-1 LM, 1M+ stage-2, stage-3 VAE-GAN at 2,048 tokens).
"""

from __future__ import annotations

import argparse
import glob
import os
import time
from dataclasses import fields

import torch

from aurl.model import ModelConfig, MusicTransformerVAEGAN
from aurl.model.sampling import generate, make_generator
from aurl.vocab import START_ID, VOCAB_SIZE

DEFAULT_STAGES = {
    "stage1": dict(mode="transformer", d_model=128, n_layers=4, n_heads=4, d_ff=512, max_seq_len=512),
    "stage2": dict(mode="vae", d_model=256, n_layers=6, n_heads=8, d_ff=1024, max_seq_len=1024,
                   latent_dim=64, encoder_layers=2),
    "stage3": dict(mode="vae_gan", d_model=256, n_layers=6, n_heads=8, d_ff=1024, max_seq_len=2048,
                   latent_dim=64, encoder_layers=2, disc_d_model=128, disc_layers=2, disc_heads=4),
}


def stage_configs() -> dict[str, ModelConfig]:
    out = {}
    files = sorted(glob.glob("configs/training_configs/stage*.yaml"))
    if files:
        import yaml

        names = {f.name for f in fields(ModelConfig)}
        for f in files:
            section = (yaml.safe_load(open(f)) or {}).get("model") or {}
            name = f.rsplit("/", 1)[-1].removesuffix(".yaml")
            out[name] = ModelConfig(**{k: v for k, v in section.items() if k in names})
    if not out:
        out = {k: ModelConfig(**v) for k, v in DEFAULT_STAGES.items()}
    return out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_generation(cfg: ModelConfig, n_tokens: int, device, rounds: int = 1) -> None:
    """Batch-1 sampling with grammar-constrained decoding on (generate's default), three ways in one run: the
    one-token step torch.compile'd, the same step eager, and no cache at all (every token a full pass: the
    baseline). rounds: each way timed that many times, interleaved (one of each per round), its best round
    kept: the shared VM's speed drifts by up to 20 % within minutes, and a slow minute would otherwise land on
    one way only. The loop before the one-token step (git 57ef172) is no longer timed: it read the sampler's
    private grammar state, which the multi-track grammar changed; its last figure is in bench/RESULTS.md."""
    cfg = ModelConfig(**{**cfg.__dict__, "max_seq_len": max(cfg.max_seq_len, n_tokens + 1), "dropout": 0.0})
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(cfg).to(device).eval()
    if model.sound_proj is not None:  # a trained model's feature is not zero: time a non-zero one
        with torch.no_grad():
            model.sound_proj.weight.normal_(0, 0.02)
    prompt = torch.full((1, 1), START_ID, device=device)
    z = torch.zeros(1, cfg.latent_dim, device=device) if cfg.is_vae else None
    ways = {"compiled step": dict(compile=True), "eager step": {}, "no cache": dict(use_cache=False)}
    warm = {}
    for name, kw in ways.items():
        t = time.perf_counter()
        generate(model, prompt, 8, generator=make_generator(0, device), z=z, **kw)  # warm-up (compiles)
        warm[name] = time.perf_counter() - t
    rows = {}
    for _ in range(rounds):
        for name, kw in ways.items():
            sync(device)
            t, cpu = time.perf_counter(), time.process_time()
            toks = generate(model, prompt, n_tokens, generator=make_generator(0, device), z=z, **kw)
            sync(device)
            fast, per_cpu = n_tokens / (time.perf_counter() - t), n_tokens / (time.process_time() - cpu)
            if name not in rows or fast > rows[name][0]:
                rows[name] = (fast, per_cpu, warm[name], toks)
    base = rows["no cache"][0]
    print(f"generation ({cfg.mode}, {model.num_parameters() / 1e6:.2f} M params, {n_tokens} tokens, batch 1, "
          f"grammar on, {device.type}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}, best of "
          f"{rounds} interleaved rounds):")
    print(f"  {'':16s} {'tokens/s':>10s} {'per CPU s':>10s} {'vs no cache':>12s} {'warm-up s':>10s}  same tokens")
    for name, (fast, per_cpu, warm, toks) in rows.items():
        same = torch.equal(toks, rows["no cache"][3])
        print(f"  {name:16s} {fast:10.1f} {per_cpu:10.1f} {fast / base:11.2f}x {warm:10.1f}  {same}")
    print(f"  KV-cache speed-up (compiled step / no cache): {rows['compiled step'][0] / rows['no cache'][0]:.1f} x "
          f"(target >= 10 x); target >= 1,000 tokens/s for the compiled step; 'per CPU s' = tokens per second of "
          f"this process's CPU time (the same figure on an idle machine, less inflated by other jobs)")


def bench_training(name: str, cfg: ModelConfig, batch: int, steps: int, seq_len: int | None, device) -> None:
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(cfg).to(device).train()
    T = seq_len or cfg.max_seq_len
    x = torch.randint(4, VOCAB_SIZE, (batch, T), device=device)
    x[:, 0] = START_ID
    m = torch.ones_like(x, dtype=torch.bool)

    def one_step(step):
        model.zero_grad(set_to_none=True)
        model(x, m, step=step).loss.backward()
        if cfg.is_gan:
            model(x, m, step=step, phase="discriminator").loss.backward()

    one_step(0)  # warm-up
    sync(device)
    t = time.perf_counter()
    for s in range(steps):
        one_step(s + 1)
    sync(device)
    dt = (time.perf_counter() - t) / steps
    print(f"  {name:8s} {cfg.mode:12s} {model.num_parameters() / 1e6:7.2f} M params  batch {batch} x {T:5d}  "
          f"{batch * T / dt:10.0f} tokens/s  ({dt * 1000:.0f} ms/step)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gen-tokens", type=int, default=1024, help="tokens sampled per generation run")
    p.add_argument("--gen-size", default="stage1_base", help="which stage's model size to sample from (the stage config's name)")
    p.add_argument("--gen-rounds", type=int, default=3, help="timed runs per way, interleaved; the best is kept")
    p.add_argument("--batch", type=int, default=4, help="windows per training step")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per stage (after 1 warm-up)")
    p.add_argument("--seq-len", type=int, default=None, help="training window (default: each stage's max_seq_len)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--skip-generation", action="store_true")
    p.add_argument("--skip-training", action="store_true")
    args = p.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {device}")
    stages = stage_configs()
    if args.gen_size not in stages:
        p.error(f"--gen-size {args.gen_size!r}: not a stage (known: {', '.join(stages)})")
    if not args.skip_generation:
        bench_generation(stages[args.gen_size], args.gen_tokens, device, args.gen_rounds)
    if not args.skip_training:
        print("training (forward + backward):")
        for name, cfg in stages.items():
            bench_training(name, cfg, args.batch, args.steps, args.seq_len, device)


if __name__ == "__main__":
    main()
