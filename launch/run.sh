#!/usr/bin/env bash
# Local launcher: `accelerate launch -m aurl.train` with the accelerate config that fits this machine.
#   no GPU -> accelerate_configs/cpu.yaml, AURL_NUM_PROCESSES (default 2) gloo processes on CPU
#   1 GPU  -> accelerate_configs/single_gpu.yaml
#   N GPUs -> accelerate_configs/multi_gpu.yaml with N processes
# Every argument goes to aurl.train (e.g. `bash launch/run.sh --stage 1 --config configs/...`).
# Knobs (environment):
#   AURL_ACCELERATE_CONFIG  a file, or a name in accelerate_configs/ (e.g. deepspeed_zero2); default: as above
#   AURL_NUM_PROCESSES      processes to start; default: the visible GPUs, or 2 without a GPU
# Sets up .venv first (launch/env.sh, idempotent) unless AURL_SKIP_ENV=1 (an environment already active).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ "${AURL_SKIP_ENV:-0}" != 1 ]; then
    source "$repo_root/launch/env.sh"
fi
cd "$repo_root"

# What the training processes will see, not what nvidia-smi lists (CUDA_VISIBLE_DEVICES may hide some).
gpus="$(python -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')"

config="${AURL_ACCELERATE_CONFIG:-}"
if [ -z "$config" ]; then
    case "$gpus" in
        0) config=cpu ;;
        1) config=single_gpu ;;
        *) config=multi_gpu ;;
    esac
fi
if [ ! -f "$config" ]; then
    config="accelerate_configs/${config%.yaml}.yaml"
fi
if [ ! -f "$config" ]; then
    echo "[aurl] error: AURL_ACCELERATE_CONFIG='${AURL_ACCELERATE_CONFIG:-}': no such file or name in" \
        "accelerate_configs/ ($(cd accelerate_configs && ls *.yaml | sed 's/\.yaml$//' | tr '\n' ' '))" >&2
    exit 2
fi

launch_args=(--config_file "$config")
if [ "$gpus" = 0 ]; then
    processes="${AURL_NUM_PROCESSES:-2}"
    if [ "$processes" = 1 ] && [ -z "${AURL_ACCELERATE_CONFIG:-}" ]; then
        echo "[aurl] one CPU process: python -m aurl.train" >&2
        exec python -m aurl.train "$@"
    fi
    # accelerate's multi-process launcher (torchrun) plus ACCELERATE_USE_CPU=1 is the one recipe that starts
    # several connected CPU processes; see accelerate_configs/cpu.yaml. Not with DeepSpeed: accelerate then
    # drops DeepSpeed; the trainer picks the gloo backend itself when there is no CUDA.
    grep -q '^distributed_type: DEEPSPEED' "$config" || export ACCELERATE_USE_CPU=1
    launch_args+=(--mixed_precision no)  # no GPU, no bf16/fp16
else
    processes="${AURL_NUM_PROCESSES:-$gpus}"
fi
if [ "$processes" -gt 1 ] && grep -q "^distributed_type: 'NO'" "$config"; then
    echo "[aurl] error: $config runs one process; $processes need another config (AURL_ACCELERATE_CONFIG)" >&2
    exit 2
fi
launch_args+=(--num_processes "$processes" --num_machines 1)

echo "[aurl] accelerate launch: $config, $processes process(es), $gpus GPU(s) visible" >&2
exec accelerate launch "${launch_args[@]}" -m aurl.train "$@"
