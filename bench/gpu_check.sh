#!/usr/bin/env bash
# One-shot GPU check (issue 14): run once on a machine with one GPU (at most ~8 minutes on an H100/H200: its
# steps' own time limits on GPU sum to 8, LIMITS below); appends the figures, with the device name and the
# date, to bench/RESULTS.md.
#
#   bash bench/gpu_check.sh                     # the full-size stage-1 and stage-2 configs, bf16, on GPU 0
#   bash bench/gpu_check.sh --cpu               # the same steps at tiny sizes on CPU (tests/test_gpu_check.py)
#   bash bench/gpu_check.sh --results FILE      # write the section to FILE instead of bench/RESULTS.md
#   bash bench/gpu_check.sh --steps 2b,4        # only these steps (1, 2a, 2b, 3, 4): rerun what failed
#
# On the lent GPU machine (nvidia-h200: no network, Python 3.12 with torch 2.11, without music21, symusic or
# DeepSpeed): first, here, `bash bench/gpu_wheels.sh` (fills the git-ignored .whl/), then one device run with
# carry [".whl"], timeout_s 600, and this command (aurl is not installed there: PYTHONPATH reaches the repo;
# only $OUT comes back, so the section is written there and copied into bench/RESULTS.md here):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && PYTHON=python3 bash bench/gpu_check.sh --results $OUT/RESULTS-gpu.md
# After a fix, a second run can take only the steps that failed (append --steps with their ids): each
# step prints its seconds, so the first run also says how much of a lease each one needs.
#
# Each step runs under its own time limit (coreutils timeout, its whole process group): a step that fails or
# runs out of time is recorded as such (its name and exit code) and the next one runs, so one broken step
# does not cost the whole lease; the section is appended either way, and the script exits 1 if any failed.
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
#  4. generation tokens/s at batch 1 and batch 16 (aurl.model.sampling.generate, KV cache, grammar on), the
#     eager step and the compiled one (compile=True: aurl/model/stepper.py), with the compiled step's one-off
#     compilation seconds (its first call, 8 tokens) for each batch size (each is compiled for its own shapes).
# --cpu: tiny configs, 2 steps, stage 1 only, without step 2a (on CPU the single_gpu.yaml launch is the plain
# trainer under accelerate launch, which tests/test_launch.py runs) and without the compile variant (see
# below: it would time eager twice); the test suite runs this mode and must stay short; fp32 for DeepSpeed (the CPU recipe of tests/test_deepspeed.py), and
# TORCH_COMPILE_DISABLE=1: the compile variants then run eager, since inductor's CPU compilation takes
# minutes on 2 cores; the compiled trainer itself is tested by tests/test_config_keys.py (train.compile), and
# step 4 skips the compiled decoding step, saying so (its ahead-of-time compilation would ignore the variable;
# tests/test_stepper.py runs it).
set -euo pipefail
cd "$(dirname "$0")/.."

CPU=0
RESULTS=bench/RESULTS.md
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) CPU=1 ;;
    --results) RESULTS="${2:?--results needs a file}"; shift ;;
    --steps) ONLY="${2:?--steps needs a list, e.g. 2b,4}"; shift ;;
    *) echo "gpu_check.sh: unknown argument $1 (known: --cpu, --results FILE, --steps LIST)" >&2; exit 2 ;;
  esac
  shift
done

# --steps: checked now, like --results (a GPU lease is short: a typo must not cost a run)
if [ -n "$ONLY" ]; then
  for s in ${ONLY//,/ }; do
    case "$s" in
      1|2b|3|4) ;;
      2a) if [ "$CPU" = 1 ]; then echo "gpu_check.sh: --steps 2a: step 2a does not run with --cpu" >&2; exit 2; fi ;;
      *) echo "gpu_check.sh: --steps $ONLY: unknown step $s (known: 1, 2a, 2b, 3, 4)" >&2; exit 2 ;;
    esac
  done
fi
# wanted ID: true when step ID is to run (all of them without --steps)
wanted() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

# checked now, not after the steps: the section is written only at the end
if [ ! -d "$(dirname -- "$RESULTS")" ]; then
  echo "gpu_check.sh: --results $RESULTS: its folder $(dirname -- "$RESULTS") does not exist" >&2
  exit 2
fi

PY=${PYTHON:-python}
LOG=$(mktemp)
ACC=("$PY" -m accelerate.commands.launch --num_processes 1)
if [ "$CPU" = 1 ]; then
  export TORCH_COMPILE_DISABLE=1 CUDA_VISIBLE_DEVICES=""
  CONFIG=configs/training_configs/tiny; STEPS=(--steps 2 --warmup 1); DEVICE=cpu; TRAIN_STAGES=1; LAUNCH_STAGE=1; VARIANTS=()
  MEM=(--config configs/training_configs/tiny/tiny_stage3.yaml --seq-len 64 --batch 2 --steps 2)
  GEN=(configs/training_configs/tiny/tiny_stage1.yaml 16)
  DS_PRECISION=(--mixed_precision no); DS_OVERRIDE=train.mixed_precision=no
  # each step's limit (steps 1, 2a (not run here), 2b, 3, 4), seconds: a 2-core machine may run this beside a test
  # suite, and on a fresh one step 2b waits for DeepSpeed's CPU op build (1-2 minutes, tests/test_deepspeed.py)
  LIMITS=(240 0 300 120 120)
else
  CONFIG=configs/training_configs; STEPS=(--steps 10 --warmup 5); DEVICE=cuda; TRAIN_STAGES=1,2; LAUNCH_STAGE=2; VARIANTS=(--variants compile)
  MEM=(--config configs/training_configs/stage3_advanced.yaml --seq-len 2048 --batch 16 --steps 3)
  GEN=(configs/training_configs/stage1_base.yaml 256)
  DS_PRECISION=(); DS_OVERRIDE=train.mixed_precision=bf16
  # sum 480 s (the ~8 minutes above; a device run may last 600 s, the wheels' install included), guessed
  # before any GPU run: step 1 holds the trainer's two cold compilations (stages 1 and 2), step 4 the
  # decoding step's two
  LIMITS=(210 45 75 45 105)
fi
DEVICE_NAME=$("$PY" -c "import torch, platform
print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU ' + (platform.processor() or platform.machine()))") \
  || DEVICE_NAME="(device unknown: $PY could not import torch)"
# a step stopped at its limit keeps what it printed
export PYTHONUNBUFFERED=1
FAILED=$(mktemp)
trap 'rm -f "$LOG" "$FAILED"' EXIT

# step LIMIT_S NAME COMMAND...: COMMAND under its own limit (its whole process group is stopped then, the
# processes it started too), skipped unless --steps names it (NAME starts with the step's id and a dot); its
# seconds are printed (what the limits above are set from), a failure is printed and listed in $FAILED, and
# the check goes on
step() {
  local limit=$1 name=$2 rc=0 start=$SECONDS
  shift 2
  wanted "${name%%.*}" || return 0
  echo; echo "### $name"; echo
  timeout --kill-after=10 "$limit" "$@" || rc=$?
  if [ "$rc" -ne 0 ]; then
    case "$rc" in
      124|137) echo "FAILED: $name: stopped at its ${limit} s limit (exit $rc)" ;;
      *) echo "FAILED: $name: exit $rc" ;;
    esac
    echo "$name (exit $rc)" >> "$FAILED"
  fi
  echo "(step ${name%%.*}: $((SECONDS - start)) s of its $limit s limit)"
}
{
  step "${LIMITS[0]}" "1. training tokens/s and MFU: plain trainer vs train.compile=true, bf16" \
    "$PY" bench/bench_train.py --config "$CONFIG" --stages "$TRAIN_STAGES" "${STEPS[@]}" --device "$DEVICE" \
    --override train.mixed_precision=bf16 "${VARIANTS[@]}"
  if [ "$CPU" = 0 ]; then
    step "${LIMITS[1]}" "2a. accelerate launch, accelerate_configs/single_gpu.yaml, 1 process" \
      "$PY" bench/bench_train.py --config "$CONFIG" --stages "$LAUNCH_STAGE" "${STEPS[@]}" --device "$DEVICE" \
      --override train.mixed_precision=bf16 \
      --launch "${ACC[*]} --config_file accelerate_configs/single_gpu.yaml --mixed_precision bf16"
  fi
  # DeepSpeed may JIT-build an op on its first run (~40 s on 2 cores)
  step "${LIMITS[2]}" "2b. accelerate launch, accelerate_configs/deepspeed_zero2.yaml, 1 process" \
    "$PY" bench/bench_train.py --config "$CONFIG" --stages "$LAUNCH_STAGE" "${STEPS[@]}" --device "$DEVICE" \
    --override "$DS_OVERRIDE" \
    --launch "${ACC[*]} --config_file accelerate_configs/deepspeed_zero2.yaml ${DS_PRECISION[*]}"
  step "${LIMITS[3]}" "3. peak memory of a stage-3 step, activation checkpointing off / on, bf16" \
    "$PY" bench/bench_memory.py "${MEM[@]}" --precision bf16 --device "$DEVICE"
  step "${LIMITS[4]}" "4. generation tokens/s (aurl.model.sampling.generate, KV cache, grammar on), eager and compiled step" \
    "$PY" - "${GEN[@]}" "$DEVICE" <<'EOF'
import os, sys, time
import torch
from aurl.config import load_config
from aurl.model import MusicTransformerVAEGAN
from aurl.model.sampling import generate
from aurl.vocab import START_ID

cfg, new, device = load_config(sys.argv[1]).model, int(sys.argv[2]), torch.device(sys.argv[3])
model = MusicTransformerVAEGAN(cfg).to(device).eval()


def timed(prompt, n, compile):
    t0 = time.perf_counter()
    tokens = generate(model, prompt, n, generator=torch.Generator(device).manual_seed(0), compile=compile)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, tokens


# the compiled step is compiled ahead of time (stepper.compiled_step), which TORCH_COMPILE_DISABLE does not stop
ways = [False] if os.environ.get("TORCH_COMPILE_DISABLE") == "1" else [False, True]
eager_tokens = {}
for compile in ways:
    for batch in (1, 16):
        prompt = torch.full((batch, 1), START_ID, dtype=torch.long, device=device)
        first, _ = timed(prompt, 8, compile)  # warm-up; compiled: holds the step's compilation for these shapes
        s, tokens = timed(prompt, new, compile)
        label = f"batch {batch:>2}" + (", compiled step" if compile else "")
        extra = ""
        if compile:  # the compiled step has never run on a GPU before this check: are its tokens right?
            same = torch.equal(tokens, eager_tokens[batch])
            extra = f"; compilation, the first call of 8 tokens: {first:.1f} s; the eager step's tokens: {same}"
        eager_tokens.setdefault(batch, tokens)
        print(f"{label}: {batch * new / s:,.0f} tokens/s ({new} new tokens per row, {s:.2f} s{extra})")
if len(ways) == 1:
    print("compiled step (compile=True): skipped, TORCH_COMPILE_DISABLE=1 (--cpu: inductor takes ~20 s a batch "
          "size on 2 cores; tests/test_stepper.py runs it)")
EOF
} 2>&1 | tee "$LOG"

{
  echo
  echo "## GPU check (bench/gpu_check.sh$([ "$CPU" = 1 ] && echo " --cpu")$([ -n "$ONLY" ] && echo " --steps $ONLY")): $DEVICE_NAME, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo '```text'
  cat "$LOG"
  if [ -s "$FAILED" ]; then
    echo
    echo "FAILED steps: $(paste -sd ';' "$FAILED" | sed 's/;/; /g')"
  fi
  echo '```'
} >> "$RESULTS"
echo "gpu_check: recorded in $RESULTS"
if [ -s "$FAILED" ]; then
  echo "gpu_check: $(wc -l < "$FAILED") step(s) failed: $(paste -sd ';' "$FAILED" | sed 's/;/; /g')" >&2
  exit 1
fi
