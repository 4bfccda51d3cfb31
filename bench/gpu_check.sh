#!/usr/bin/env bash
# One-shot GPU check (issue 14): run once on a machine with one GPU (at most ~8 minutes on an H100/H200);
# appends the figures, with the device name and the date, to bench/RESULTS.md.
#
#   bash bench/gpu_check.sh                     # the full-size stage-1 and stage-2 configs, bf16, on GPU 0
#   bash bench/gpu_check.sh --cpu               # the same steps at tiny sizes on CPU (tests/test_gpu_check.py)
#   bash bench/gpu_check.sh --results FILE      # write the section to FILE instead of bench/RESULTS.md
#
# What it measures, each next to its baseline in the same run:
#  1. training tokens/s per GPU and MFU of the full-size stage 1 and 2 in bf16 (SDPA picks its fused kernels
#     on GPU), the plain trainer vs train.compile=true, and a bare PyTorch loop (bench/bench_train.py);
#     MFU = tokens/s x (6 N + 12 L d T) / peak, N the generator's parameters, L layers, d = d_model,
#     T = seq_len; peak = the GPU's dense bf16 FLOP/s from its data sheet (H100/H200 SXM: 989 TFLOP/s);
#  2. the same trainer through `accelerate launch` with accelerate_configs/single_gpu.yaml and with
#     deepspeed_zero2.yaml (1 process, NCCL);
#  3. peak memory (torch.cuda.max_memory_allocated) of a stage-3 step at 2,048 tokens with and without
#     train.activation_checkpointing (bench/bench_memory.py);
#  4. generation tokens/s at batch 1 and batch 16 (aurl.model.sampling.generate, KV cache, grammar on).
# --cpu: tiny configs, 2 steps, stage 1 only, without step 2a (on CPU the single_gpu.yaml launch is the plain
# trainer under accelerate launch, which tests/test_launch.py runs) and without the compile variant (see
# below: it would time eager twice); the test suite runs this mode and must stay short; fp32 for DeepSpeed (the CPU recipe of tests/test_deepspeed.py), and
# TORCH_COMPILE_DISABLE=1: the compile variants then run eager, since inductor's CPU compilation takes
# minutes on 2 cores; the compiled trainer itself is tested by tests/test_config_keys.py (train.compile).
set -euo pipefail
cd "$(dirname "$0")/.."

CPU=0
RESULTS=bench/RESULTS.md
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) CPU=1 ;;
    --results) RESULTS="${2:?--results needs a file}"; shift ;;
    *) echo "gpu_check.sh: unknown argument $1 (known: --cpu, --results FILE)" >&2; exit 2 ;;
  esac
  shift
done

PY=${PYTHON:-python}
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
ACC=("$PY" -m accelerate.commands.launch --num_processes 1)
if [ "$CPU" = 1 ]; then
  export TORCH_COMPILE_DISABLE=1 CUDA_VISIBLE_DEVICES=""
  CONFIG=configs/training_configs/tiny; STEPS=(--steps 2 --warmup 1); DEVICE=cpu; TRAIN_STAGES=1; LAUNCH_STAGE=1; VARIANTS=()
  MEM=(--config configs/training_configs/tiny/tiny_stage3.yaml --seq-len 64 --batch 2 --steps 2)
  GEN=(configs/training_configs/tiny/tiny_stage1.yaml 16)
  DS_PRECISION=(--mixed_precision no); DS_OVERRIDE=train.mixed_precision=no
else
  CONFIG=configs/training_configs; STEPS=(--steps 10 --warmup 5); DEVICE=cuda; TRAIN_STAGES=1,2; LAUNCH_STAGE=2; VARIANTS=(--variants compile)
  MEM=(--config configs/training_configs/stage3_advanced.yaml --seq-len 2048 --batch 16 --steps 3)
  GEN=(configs/training_configs/stage1_base.yaml 256)
  DS_PRECISION=(); DS_OVERRIDE=train.mixed_precision=bf16
fi
DEVICE_NAME=$("$PY" -c "import torch, platform
print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU ' + (platform.processor() or platform.machine()))")

step() { echo; echo "### $*"; echo; }
{
  step "1. training tokens/s and MFU: plain trainer vs train.compile=true, bf16"
  "$PY" bench/bench_train.py --config "$CONFIG" --stages "$TRAIN_STAGES" "${STEPS[@]}" --device "$DEVICE" \
    --override train.mixed_precision=bf16 "${VARIANTS[@]}"
  if [ "$CPU" = 0 ]; then
    step "2a. accelerate launch, accelerate_configs/single_gpu.yaml, 1 process"
    "$PY" bench/bench_train.py --config "$CONFIG" --stages "$LAUNCH_STAGE" "${STEPS[@]}" --device "$DEVICE" \
      --override train.mixed_precision=bf16 \
      --launch "${ACC[*]} --config_file accelerate_configs/single_gpu.yaml --mixed_precision bf16"
  fi
  step "2b. accelerate launch, accelerate_configs/deepspeed_zero2.yaml, 1 process"
  "$PY" bench/bench_train.py --config "$CONFIG" --stages "$LAUNCH_STAGE" "${STEPS[@]}" --device "$DEVICE" \
    --override "$DS_OVERRIDE" \
    --launch "${ACC[*]} --config_file accelerate_configs/deepspeed_zero2.yaml ${DS_PRECISION[*]}"
  step "3. peak memory of a stage-3 step, activation checkpointing off / on, bf16"
  "$PY" bench/bench_memory.py "${MEM[@]}" --precision bf16 --device "$DEVICE"
  step "4. generation tokens/s (aurl.model.sampling.generate, KV cache, grammar on)"
  "$PY" - "${GEN[@]}" "$DEVICE" <<'EOF'
import sys, time
import torch
from aurl.config import load_config
from aurl.model import MusicTransformerVAEGAN
from aurl.model.sampling import generate
from aurl.vocab import START_ID

cfg, new, device = load_config(sys.argv[1]).model, int(sys.argv[2]), torch.device(sys.argv[3])
model = MusicTransformerVAEGAN(cfg).to(device).eval()
for batch in (1, 16):
    prompt = torch.full((batch, 1), START_ID, dtype=torch.long, device=device)
    generate(model, prompt, 8, generator=torch.Generator(device).manual_seed(0))  # warm-up
    t0 = time.perf_counter()
    generate(model, prompt, new, generator=torch.Generator(device).manual_seed(0))
    if device.type == "cuda":
        torch.cuda.synchronize()
    s = time.perf_counter() - t0
    print(f"batch {batch:>2}: {batch * new / s:,.0f} tokens/s ({new} new tokens per row, {s:.2f} s)")
EOF
} 2>&1 | tee "$LOG"

{
  echo
  echo "## GPU check (bench/gpu_check.sh$([ "$CPU" = 1 ] && echo " --cpu")): $DEVICE_NAME, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo '```text'
  cat "$LOG"
  echo '```'
} >> "$RESULTS"
echo "gpu_check: recorded in $RESULTS"
