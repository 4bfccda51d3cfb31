"""Training benchmark (not a test): aurl's train step against a bare PyTorch loop, per stage, in one run.

    python bench/bench_train.py [--config configs/training_configs/quickstart] [--stages 1,2,3]
                                [--steps 20] [--warmup 3] [--device cpu]

For each stage: (a) the real trainer, `python -m aurl.train --stage N` on the stage's config, run for
`warmup` and for `warmup + steps` optimizer steps (periodic validation, checkpoints and trackers off); the
difference of the two wall times is its time for the measured steps; (b) a bare loop in this process on the same
model config, the same cache, windows, batch and accumulation and the same thread count: forward, backward,
clip, AdamW step (and the discriminator's step in vae_gan), nothing else. Prints the tokens/s of
both and aurl's overhead (target: at most 5 %).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def run_aurl(config: Path, stage: int, out: Path, n_steps: int) -> float:
    """Wall seconds of `python -m aurl.train --stage N` for n_steps optimizer steps (fresh output dir)."""
    cmd = [sys.executable, "-m", "aurl.train", "--stage", str(stage), "--config", str(config),
           "--output-dir", str(out), "--from-scratch", "--tracker", "none",
           f"train.max_steps={n_steps}", "train.epochs=1000", "train.val_every_steps=0",
           "train.patience=0", "checkpoint.every_steps=0", "logging.progress_bar=false",
           f"data.cache_dir={out.parent / 'cache'}"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"aurl.train failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return wall


def run_bare(cfg, cache_dir: Path, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """(target tokens, seconds) of the measured steps of a plain PyTorch loop on the same model and the
    very same batches as the trainer (same seed, sampler and windows)."""
    from torch.utils.data import DataLoader

    from aurl.data.cache import TokenCache
    from aurl.data.dataset import EpochBatchSampler, WindowDataset
    from aurl.model import MusicTransformerVAEGAN

    d, o = cfg.data, cfg.optim
    ds = WindowDataset(TokenCache.open(cache_dir), "train", seq_len=d.seq_len, augment=cfg.augment, seed=cfg.train.seed)
    sampler = EpochBatchSampler(len(ds), d.batch_size, seed=cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    model = MusicTransformerVAEGAN(cfg.model).to(device).train()
    opt = torch.optim.AdamW(model.generator_parameters(), lr=o.lr, betas=(o.beta1, o.beta2))
    d_params = model.discriminator_parameters()
    d_opt = torch.optim.AdamW(d_params, lr=o.disc_lr) if d_params else None
    bf16 = cfg.train.mixed_precision == "bf16"
    measured_tokens, measured_s, step, epoch = 0.0, 0.0, 0, 0
    while step < warmup + steps:
        sampler.set_epoch(epoch)
        batches = iter(DataLoader(ds, batch_sampler=sampler, num_workers=d.num_workers))
        for _ in range(len(sampler) // o.grad_accum):
            t0, tokens = time.perf_counter(), 0.0
            for _ in range(o.grad_accum):
                mb = next(batches)
                ids, mask = mb["input_ids"].to(device), mb["loss_mask"].to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    out = model(ids, mask, step=step)
                (out.loss / o.grad_accum).backward()
                tokens += float(out.metrics["tokens"])
            if o.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.generator_parameters(), o.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if d_opt is not None:
                d_opt.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    d_out = model(ids, mask, step=step, phase="discriminator")
                d_out.loss.backward()
                if o.grad_clip:
                    torch.nn.utils.clip_grad_norm_(d_params, o.grad_clip)
                d_opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            step += 1
            if step > warmup:
                measured_tokens += tokens
                measured_s += time.perf_counter() - t0
            if step >= warmup + steps:
                break
        epoch += 1
    return measured_tokens, measured_s


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=REPO / "configs" / "training_configs" / "quickstart",
                   help="folder of per-stage YAMLs (default: the CPU quickstart set)")
    p.add_argument("--stages", default="1,2,3", help="comma-separated stages to measure")
    p.add_argument("--steps", type=int, default=20, help="measured optimizer steps per stage and loop")
    p.add_argument("--warmup", type=int, default=3, help="optimizer steps not measured")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="device of the bare loop (the trainer picks CUDA itself when present)")
    args = p.parse_args(argv)

    from aurl.config import load_config, stage_config_path

    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}; "
          f"{args.steps} measured steps after {args.warmup} warm-up steps")
    print(f"{'stage':<6} {'mode':<12} {'batch x accum x seq':<20} {'aurl tok/s':>11} {'bare tok/s':>11} "
          f"{'overhead':>9}")
    for stage in [int(s) for s in args.stages.split(",")]:
        path = stage_config_path(args.config, stage)
        cfg = load_config(path)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            run_aurl(path, stage, tmp / "warm", args.warmup)  # builds the cache, warms the file cache
            short = run_aurl(path, stage, tmp / "short", args.warmup)
            long = run_aurl(path, stage, tmp / "long", args.warmup + args.steps)
            tokens, bare_s = run_bare(cfg, tmp / "cache", args.steps, args.warmup, device)
        # the same batches in both: the trainer's time for the measured steps = the difference of two runs
        # that differ only in max_steps (start-up, final validation and checkpoint cancel out)
        aurl_rate, bare_rate = tokens / max(long - short, 1e-9), tokens / bare_s
        shape = f"{cfg.data.batch_size} x {cfg.optim.grad_accum} x {cfg.data.seq_len}"
        print(f"{stage:<6} {cfg.model.mode:<12} {shape:<20} {aurl_rate:>11,.0f} {bare_rate:>11,.0f} "
              f"{100 * (1 - aurl_rate / bare_rate):>8.1f}%", flush=True)
    print("overhead = 1 - aurl/bare (target <= 5 %); target tokens of the same batches in both")
    return 0


if __name__ == "__main__":
    sys.exit(main())
