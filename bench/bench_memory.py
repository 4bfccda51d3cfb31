"""Memory benchmark (not a test): peak memory and step time of training steps with and without
train.activation_checkpointing, side by side in one run.

    python bench/bench_memory.py [--config configs/training_configs/stage3_advanced.yaml] [--seq-len 2048]
                                 [--batch 1] [--steps 3] [--precision no|bf16|both] [--device cpu]

Each variant runs in its own subprocess (a fresh process: CPU peak RSS is per process and never goes down):
the stage config's model (full size by default: stage 3, vae_gan), `--batch` windows of `--seq-len` random
token ids (memory and time do not depend on the ids), `--steps` optimizer steps of what the trainer does per
step (generator forward + backward + AdamW, and in vae_gan the discriminator's phase + its AdamW), the model
switched exactly as the trainer switches it (MusicTransformerVAEGAN.set_activation_checkpointing).

Reported per variant: on CPU the process's peak RSS (VmHWM) over the first step and the step's own share of
it: that peak minus the RSS before the first step (weights and the Python and torch runtime are in both, the
optimizer states the first step allocates are counted); and the later steps' share: their peak minus the
memory before them (the peak is reset after the first step: freed heap returned by malloc_trim, VmHWM reset
by /proc/self/clear_refs), i.e. what every step after the first adds: activations, gradients, transients.
On CUDA torch.cuda.max_memory_allocated and the same differences. Step time: the
median of the steps after the first (the first allocates the optimizer states and warms the allocator).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def peak_bytes(device: torch.device) -> int:
    """The peak since the process started or since reset_peak()."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    with open("/proc/self/status") as f:  # VmHWM, the peak RSS that reset_peak() can reset (ru_maxrss cannot)
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def reset_peak(device: torch.device) -> None:
    """Start a new peak from the memory in use now: freed heap pages are returned first (malloc_trim), then
    Linux's peak RSS is reset (clear_refs 5); on CUDA, the allocator's peak statistics."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    import ctypes

    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def current_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def child(args) -> dict:
    """One variant, in this process: the figures as a dict."""
    from aurl.config import load_config
    from aurl.model import MusicTransformerVAEGAN
    from aurl.vocab import VOCAB_SIZE

    cfg = load_config(args.config, [f"model.max_seq_len={max(args.seq_len, 2)}", "model.dropout=0.1"])
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(cfg.model).to(device).train()
    model.set_activation_checkpointing(args.checkpointing)
    opt = torch.optim.AdamW(model.generator_parameters(), lr=1e-4)
    d_params = model.discriminator_parameters()
    d_opt = torch.optim.AdamW(d_params, lr=1e-4) if d_params else None
    ids = torch.randint(0, VOCAB_SIZE, (args.batch, args.seq_len), device=device)
    mask = torch.ones_like(ids, dtype=torch.bool)
    bf16 = args.precision == "bf16"
    before = current_bytes(device)
    reset_peak(device)
    times, first_peak = [], 0
    for step in range(args.steps):
        if step == 1:  # the later steps: the optimizer states exist, the step's own memory is what it adds
            first_peak, later_before = peak_bytes(device), current_bytes(device)
            reset_peak(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(ids, mask, step=step)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if d_opt is not None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                d_out = model(ids, mask, step=step, phase="discriminator")
            d_out.loss.backward()
            d_opt.step()
            d_opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    if args.steps == 1:
        first_peak = peak_bytes(device)
    later = {"later_step_peak": peak_bytes(device) - later_before} if args.steps > 1 else {}
    return {"peak": first_peak, "step_peak": first_peak - before, **later,
            "step_s": statistics.median(times[1:] or times), "loss": float(out.loss)}


def run_variant(args, checkpointing: bool, precision: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--config", str(args.config),
           "--seq-len", str(args.seq_len), "--batch", str(args.batch), "--steps", str(args.steps),
           "--device", args.device, "--precision", precision] + (["--checkpointing"] if checkpointing else [])
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"variant failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=REPO / "configs" / "training_configs" / "stage3_advanced.yaml")
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per window")
    p.add_argument("--batch", type=int, default=1, help="windows per step (memory of a step grows linearly)")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per variant (the first is not timed)")
    p.add_argument("--precision", choices=("no", "bf16", "both"), default="no")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.seq_len < 2 or args.batch < 1 or args.steps < 1:
        raise SystemExit("error: --seq-len must be >= 2, --batch and --steps >= 1")
    if args.child:
        print(json.dumps(child(args)))
        return 0
    what = "max_memory_allocated" if args.device.startswith("cuda") else "peak RSS"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}; {args.config.name}, "
          f"batch {args.batch} x {args.seq_len} tokens, {args.steps} steps per variant; memory = {what}")
    print(f"{'precision':<10} {'checkpointing':<14} {'peak MiB':>9} {'step MiB':>9} {'later MiB':>10} {'step s':>8} "
          f"{'step mem':>9} {'later mem':>10} {'step time':>10}")
    for precision in (("no", "bf16") if args.precision == "both" else (args.precision,)):
        base = run_variant(args, False, precision)
        ckpt = run_variant(args, True, precision)
        for name, r in (("off", base), ("on", ckpt)):
            later = r.get("later_step_peak")
            print(f"{precision:<10} {name:<14} {r['peak'] / 2**20:>9,.0f} {r['step_peak'] / 2**20:>9,.0f} "
                  f"{(later or 0) / 2**20:>10,.0f} {r['step_s']:>8.2f} {r['step_peak'] / base['step_peak']:>8.2f}x "
                  f"{(later or 0) / (base.get('later_step_peak') or 1):>9.2f}x {r['step_s'] / base['step_s']:>9.2f}x",
                  flush=True)
    print("step MiB = the first step's peak minus the memory before it (weights and runtime in both; the optimizer "
          "states it allocates counted); later MiB = the later steps' peak minus the memory before them (the "
          "optimizer states already there: activations, gradients, transients); ratios vs off (target: step "
          "memory <= 0.5x at <= 1.35x step time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
