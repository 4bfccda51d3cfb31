"""Training benchmark (not a test): aurl's train step against a bare PyTorch loop, per stage, in one run.

    python bench/bench_train.py [--config configs/training_configs/quickstart] [--stages 1,2,3]
                                [--steps 20] [--warmup 3] [--device cpu] [--override KEY=VALUE ...]
                                [--variants compile,bf16,fp32,checkpointing] [--launch "accelerate launch ..."]

For each stage: (a) the real trainer, `python -m aurl.train --stage N` on the stage's config for
`warmup + steps` optimizer steps (periodic validation, checkpoints, trackers and the stage-end evaluation
off), timed by the trainer itself: it logs each step's wall time (`step_s`: from the end of the previous step
to the end of this one, so data loading, Accelerate, logging and every other bit of bookkeeping count) to
logs/metrics.jsonl with log_every_steps=1; (b) a bare loop in this process on the same model config, the
same cache, windows, batch and accumulation and the same thread count: forward, backward, clip, AdamW step
(and the discriminator's step in vae_gan), nothing else, timed the same way. Both sum the steps after the
warm-up. Prints the tokens/s of both and aurl's overhead (target: at most 5 %), by the mean and by the median
step (the median is less sensitive to other jobs on a shared machine). --variants: the trainer again with
train.compile=true, train.mixed_precision=bf16 / no or train.activation_checkpointing=true, each against the
plain trainer of the same run (a compiled run's warm-up steps hold the compilation: raise --warmup until the
timed steps are past it). --launch: the trainer runs under that launcher (e.g. `accelerate launch
--config_file accelerate_configs/single_gpu.yaml`) instead of `python`.

On a CUDA device the bare loop also reports model FLOPs utilisation:
    MFU = tokens/s x (6 N + 12 L d T) / peak (and the trainer variants likewise),  N = parameters in the forward pass, L layers, d = d_model,
    T = seq_len (attention score and value matmuls, forward + backward), peak = the device's dense bf16 FLOP/s.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
# dense bf16 peak FLOP/s by device name substring (vendor data sheets, SXM parts)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}
# --variants: the trainer's overrides of each, timed against the plain trainer in the same run
VARIANTS = {"compile": ("train.compile=true",), "bf16": ("train.mixed_precision=bf16",),
            "fp32": ("train.mixed_precision=no",), "checkpointing": ("train.activation_checkpointing=true",)}


def run_aurl(config: Path, stage: int, out: Path, n_steps: int, cache: Path, overrides: tuple[str, ...] = (),
             launch: tuple[str, ...] = ()) -> list[float]:
    """The trainer's own wall seconds per optimizer step of `python -m aurl.train --stage N` (fresh run), with
    config overrides, or through a launcher: `launch` is the command before `-m aurl.train`
    (e.g. accelerate launch --config_file ...); default: this Python."""
    cmd = [*(launch or (sys.executable,)), "-m", "aurl.train", "--stage", str(stage), "--config", str(config),
           "--output-dir", str(out), "--from-scratch", "--tracker", "none",
           f"train.max_steps={n_steps}", "train.epochs=1000", "train.val_every_steps=0",
           "train.patience=0", "checkpoint.every_steps=0", "logging.progress_bar=false",
           "logging.log_every_steps=1", "eval.enabled=false", f"data.cache_dir={cache}", *overrides]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"aurl.train failed ({r.returncode}):\n{r.stderr[-3000:]}")
    steps = {}
    for line in (out / "logs" / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["split"] == "train" and "step_s" in rec:
            steps[rec["step"]] = rec["step_s"]
    return [steps[k] for k in sorted(steps)]


def flops_per_token(cfg) -> float:
    """6 N + 12 L d T (see the module docstring); N counts the decoder and its embeddings."""
    from aurl.model import MusicTransformerVAEGAN

    m = cfg.model
    n = sum(p.numel() for p in MusicTransformerVAEGAN(m).generator_parameters())
    return 6 * n + 12 * m.n_layers * m.d_model * cfg.data.seq_len


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def run_bare(cfg, cache_dir: Path, steps: int, warmup: int, device: torch.device,
             compile_model: bool = False) -> tuple[float, list[float]]:
    """(target tokens, seconds per step) of the measured steps of a plain PyTorch loop on the same model and
    the very same batches as the trainer (same seed, sampler and windows)."""
    from torch.utils.data import DataLoader

    from aurl.data.dataset import EpochBatchSampler, WindowDataset
    from aurl.data.token_cache import TokenCache
    from aurl.model import MusicTransformerVAEGAN

    d, o = cfg.data, cfg.optim
    ds = WindowDataset(TokenCache.open(cache_dir), "train", seq_len=d.seq_len, augment=cfg.augment, seed=cfg.train.seed)
    sampler = EpochBatchSampler(len(ds), d.batch_size, seed=cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    model = MusicTransformerVAEGAN(cfg.model).to(device).train()
    step_fn = torch.compile(model) if compile_model else model
    opt = torch.optim.AdamW(model.generator_parameters(), lr=o.lr, betas=(o.beta1, o.beta2))
    d_params = model.discriminator_parameters()
    d_opt = torch.optim.AdamW(d_params, lr=o.disc_lr) if d_params else None
    bf16 = cfg.train.mixed_precision == "bf16"
    measured_tokens, measured_s, step, epoch = 0.0, [], 0, 0
    last_end = time.perf_counter()
    while step < warmup + steps:
        sampler.set_epoch(epoch)
        batches = iter(DataLoader(ds, batch_sampler=sampler, num_workers=d.num_workers))
        for _ in range(len(sampler) // o.grad_accum):
            tokens = 0.0
            for _ in range(o.grad_accum):
                mb = next(batches)
                ids, mask = mb["input_ids"].to(device), mb["loss_mask"].to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                    out = step_fn(ids, mask, step=step)
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
            now = time.perf_counter()  # timed like the trainer's step_s: from the previous step's end
            if step > warmup:
                measured_tokens += tokens
                measured_s.append(now - last_end)
            last_end = now
            if step >= warmup + steps:
                break
        epoch += 1
    return measured_tokens, measured_s


def measure_stage(args, stage: int, device: torch.device, peak: float | None, variants: list[str],
                  launch: tuple[str, ...]) -> None:
    """One stage's lines: the trainer against the bare loop, then the bare loop under torch.compile (--compile)
    and the trainer variants, each printed as soon as its runs are done: a run stopped at a time limit
    (gpu_check.sh's steps) during a compilation keeps the figures before it."""
    from aurl.config import load_config, stage_config_path

    path = stage_config_path(args.config, stage)
    cfg = load_config(path, args.override)
    n = args.warmup + args.steps
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        aurl_s = run_aurl(path, stage, tmp / "aurl", n, tmp / "cache", tuple(args.override), launch)[args.warmup:]
        tokens, bare_s = run_bare(cfg, tmp / "cache", args.steps, args.warmup, device)
        # the same batches in both loops: equal target tokens, so the ratio of times is the ratio of rates
        aurl_rate, bare_rate = tokens / sum(aurl_s), tokens / sum(bare_s)
        median_overhead = 1 - statistics.median(bare_s) / statistics.median(aurl_s)
        shape = f"{cfg.data.batch_size} x {cfg.optim.grad_accum} x {cfg.data.seq_len}"
        mfu = f" {100 * bare_rate * flops_per_token(cfg) / peak:>8.1f}%" if peak else ""
        print(f"{stage:<6} {cfg.model.mode:<10} {shape:<20} {aurl_rate:>11,.0f} {bare_rate:>11,.0f} "
              f"{100 * (1 - aurl_rate / bare_rate):>8.1f}% {100 * median_overhead:>8.1f}%{mfu}", flush=True)
        if args.compile:
            c_tokens, c_secs = run_bare(cfg, tmp / "cache", args.steps, args.warmup, device, compile_model=True)
            c_rate = c_tokens / sum(c_secs)
            c_mfu = f", MFU {100 * c_rate * flops_per_token(cfg) / peak:.1f}%" if peak else ""
            print(f"{'':<6} bare loop under torch.compile: {c_rate:,.0f} tok/s "
                  f"({c_rate / bare_rate:.2f}x eager){c_mfu}", flush=True)
        for v in variants:
            secs = run_aurl(path, stage, tmp / v, n, tmp / "cache", (*args.override, *VARIANTS[v]),
                            launch)[args.warmup:]
            rate = tokens / sum(secs)
            v_mfu = f", MFU {100 * rate * flops_per_token(cfg) / peak:.1f}%" if peak else ""
            print(f"{'':<6} aurl with {' '.join(VARIANTS[v])}: {rate:,.0f} tok/s ({rate / aurl_rate:.2f}x the "
                  f"plain trainer; median step {statistics.median(aurl_s) / statistics.median(secs):.2f}x)"
                  f"{v_mfu}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=REPO / "configs" / "training_configs" / "quickstart",
                   help="folder of per-stage YAMLs (default: the CPU quickstart set)")
    p.add_argument("--stages", default="1,2,3", help="comma-separated stages to measure")
    p.add_argument("--steps", type=int, default=20, help="measured optimizer steps per stage and loop")
    p.add_argument("--warmup", type=int, default=3, help="optimizer steps not measured")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="device of the bare loop (the trainer picks CUDA itself when present)")
    p.add_argument("--compile", action="store_true", help="also time the bare loop under torch.compile")
    p.add_argument("--variants", default="",
                   help="comma-separated trainer variants timed against the plain trainer in the same run: "
                        "compile (train.compile=true), bf16 (train.mixed_precision=bf16), "
                        "fp32 (train.mixed_precision=no), checkpointing (train.activation_checkpointing=true)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run (trainer and bare loop), e.g. train.mixed_precision=bf16")
    p.add_argument("--launch", default="", help="launcher command for the trainer runs, before `-m aurl.train`")
    args = p.parse_args(argv)
    launch = tuple(shlex.split(args.launch))
    if args.steps < 1 or args.warmup < 0:
        raise SystemExit("error: --steps must be >= 1 and --warmup >= 0")
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"error: --variants {','.join(unknown)}: unknown (known: {', '.join(VARIANTS)})")

    device = torch.device(args.device)
    peak = peak_flops(device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}; "
          f"{args.steps} measured steps after {args.warmup} warm-up steps")
    print(f"{'stage':<6} {'mode':<10} {'batch x accum x seq':<20} {'aurl tok/s':>11} {'bare tok/s':>11} "
          f"{'overhead':>9} {'(median)':>9}" + (f" {'bare MFU':>9}" if peak else ""))
    for stage in [int(s) for s in args.stages.split(",")]:
        measure_stage(args, stage, device, peak, variants, launch)
    print("overhead = 1 - aurl/bare tokens/s (target <= 5 %); the same batches in both, each step timed from "
          "the end of the previous one")
    if peak:
        print(f"MFU = tokens/s x (6N + 12 L d T) / {peak / 1e12:.0f} TFLOP/s dense bf16 peak")
    return 0


if __name__ == "__main__":
    sys.exit(main())
