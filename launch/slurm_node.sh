#!/usr/bin/env bash
# One per node inside a SLURM job (slurm/stage.sh runs it with `srun --ntasks-per-node 1`): fills the
# multi-node accelerate config from SLURM and starts `accelerate launch -m aurl.train "$@"` on this node.
#   head node    = first host of `scontrol show hostnames $SLURM_JOB_NODELIST` (its NodeAddr)
#   machine rank = $SLURM_NODEID, read here, i.e. per task (expanding it in the batch script would make every
#                  node rank 0 and hang the rendezvous)
#   port         = derived from the job id: the same after a requeue, different for jobs sharing a node
# Knobs (environment, set by slurm/stage.sh):
#   AURL_ACCELERATE_CONFIG  file or name in accelerate_configs/   (default: multi_node)
#   AURL_GPUS_PER_NODE      GPUs, hence processes, per node; 0 = CPU nodes (default: 0)
#   AURL_PROCS_PER_NODE     processes per node on CPU nodes (default: 1)
# Signals: accelerate launch (torchrun) does not forward SIGUSR1 to its workers and a SIGUSR1 would kill it,
# so it runs with SIGUSR1 ignored and this script forwards SIGUSR1 and SIGTERM to the training processes as
# SIGUSR1 (the trainer only sets a flag, then all ranks stop together at a step boundary).
set -euo pipefail
# Trapped before anything else: stage.sh forwards a stop request to this job step every 2 s from the moment
# it comes, which may be before this script gets here; untrapped, SIGUSR1 would kill it (and the step with
# it) instead of reaching the trainer once it listens.
stop_requested=0
launcher=""
forward() {
    stop_requested=1
    # The workers are the launcher's children (torchrun starts each in its own session).
    [ -z "$launcher" ] || pkill -USR1 -P "$launcher" 2>/dev/null || true
}
trap forward USR1 TERM INT
repo_root="${AURL_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
: "${SLURM_JOB_ID:?launch/slurm_node.sh runs inside a SLURM job step (srun)}"
if [ "${AURL_SKIP_ENV:-0}" != 1 ]; then
    source "$repo_root/launch/env.sh"
fi
cd "$repo_root"

nodes="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}"
machine_rank="${SLURM_NODEID:?}"
head_node="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
# NodeAddr, not the name: a node name need not resolve (several slurmd on one test machine).
head_addr="$(scontrol show node -o "$head_node" 2>/dev/null | grep -oP '(?<=NodeAddr=)\S+' || true)"
head_addr="${head_addr:-$head_node}"
port=$((20000 + SLURM_JOB_ID % 20000))

gpus="${AURL_GPUS_PER_NODE:-0}"
config="${AURL_ACCELERATE_CONFIG:-multi_node}"
[ -f "$config" ] || config="accelerate_configs/${config%.yaml}.yaml"
[ -f "$config" ] || { echo "[aurl] error: no accelerate config $config" >&2; exit 2; }

launch_args=(--config_file "$config")
if [ "$gpus" = 0 ]; then
    # See accelerate_configs/cpu.yaml; with DeepSpeed the trainer picks gloo itself when there is no CUDA.
    grep -q '^distributed_type: DEEPSPEED' "$config" || export ACCELERATE_USE_CPU=1
    per_node="${AURL_PROCS_PER_NODE:-1}"
    launch_args+=(--mixed_precision no)
else
    per_node="$gpus"
fi
launch_args+=(--num_machines "$nodes" --machine_rank "$machine_rank" --num_processes $((nodes * per_node))
    --main_process_ip "$head_addr" --main_process_port "$port" --rdzv_backend static)
if [ $((nodes * per_node)) -gt 1 ] && ! grep -q '^distributed_type: DEEPSPEED' "$config"; then
    launch_args+=(--multi_gpu)  # the torchrun launcher; on CPU nodes with ACCELERATE_USE_CPU=1 (gloo)
fi

echo "[aurl] node $machine_rank/$nodes on $(hostname) (${SLURMD_NODENAME:-?}): head $head_node ($head_addr:$port)," \
    "$per_node process(es) here, $config" >&2

(
    trap '' USR1
    exec accelerate launch "${launch_args[@]}" -m aurl.train "$@"
) &
launcher=$!

# A trapped signal interrupts `wait`; wait again until the launcher is gone (bash keeps its exit status).
while kill -0 "$launcher" 2>/dev/null; do
    if [ "$stop_requested" = 1 ]; then
        # Again every 2 s: a worker still starting up when the signal came (USR1 ignored until the trainer
        # installs its handler) gets it once it listens. The trainer's handler only sets a flag.
        pkill -USR1 -P "$launcher" 2>/dev/null || true
        sleep 2 &
        wait $! || true
    else
        wait "$launcher" || true
    fi
done
wait "$launcher" && rc=0 || rc=$?
trap - USR1 TERM INT
echo "[aurl] node $machine_rank: accelerate launch exited with $rc (stop requested: $stop_requested)" >&2
exit "$rc"
