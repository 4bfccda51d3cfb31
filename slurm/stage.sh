#!/usr/bin/env bash
#SBATCH --job-name=aurl-stage
#SBATCH --ntasks-per-node=1
#SBATCH --open-mode=append
#SBATCH --requeue
# One training stage across all nodes of this job: one launcher per node (launch/slurm_node.sh) through srun.
# slurm/pipeline.sh submits it (nodes, time limit, logs, dependencies, signal); by hand:
#   sbatch --nodes 2 --output outputs/logs/slurm/%x-%j.out slurm/stage.sh 1
# Knobs (environment, defaults in slurm/pipeline.sh; the job inherits them from sbatch):
#   AURL_OUTPUT_DIR (default <repo>/outputs), AURL_CONFIG (training config; "{stage}" becomes the stage number),
#   AURL_DATA (MIDI folder), AURL_TRAIN_ARGS (more aurl.train arguments, e.g. key=value overrides),
#   AURL_ACCELERATE_CONFIG, AURL_GPUS_PER_NODE, AURL_PROCS_PER_NODE (read by launch/slurm_node.sh),
#   AURL_SKIP_ENV=1 (use the python/accelerate on PATH instead of setting up .venv).
# Nodes: this job's own count (SLURM_JOB_NUM_NODES); once requeued, AURL_REQUEUE_NODES (if fewer) -- the job
# shrinks to that many (`scontrol update NumNodes`) and gives the others back. The trainer resumes a stage
# committed on another number of nodes elastically (aurl/train/elastic.py: the global batch and the sample
# order kept; a count that cannot split the global batch is refused by name, and the job fails).
# Exit status: 0 only when the stage is completed (at once if it already was). A stage stopped early by
# SIGUSR1 (preemption, `--signal=B:USR1@N`, `scancel --signal=USR1 --batch`) or by the trainer's deadline
# saves a committed checkpoint, requeues this job (`scontrol requeue`: same job id, so the afterok chain
# holds, and the next run resumes) and exits 75. SIGTERM (scancel, time limit) stops and saves too, but is
# not requeued here: SLURM decides (it requeues on preemption with PreemptMode=REQUEUE).
set -euo pipefail
stage="${1:?usage: sbatch [options] slurm/stage.sh STAGE}"
: "${SLURM_JOB_ID:?slurm/stage.sh runs as a SLURM batch job (sbatch)}"

log() { echo "[aurl] $(date -u +%H:%M:%S) job $SLURM_JOB_ID stage $stage: $*" >&2; }

# accelerate launch does not forward SIGUSR1, and `--signal=B:` or `scancel --batch` reach only this shell:
# forward to every node's launcher (scancel --signal without --batch signals the job steps only). Trapped
# before anything else: SLURM's `--signal=B:USR1@N` can come up to a minute early, before the trainer runs.
preempted=0
stopping=0
forward() {
    [ "$1" = USR1 ] && preempted=1
    stopping=1
    log "got SIG$1: asking the training processes to save and stop"
    scancel --signal=USR1 "$SLURM_JOB_ID" 2>/dev/null || true
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

# sbatch runs a copy of this script from its spool folder: find the checkout from the job's Command.
if [ -n "${AURL_REPO:-}" ]; then
    repo_root="$AURL_REPO"
else
    command="$(scontrol show job -o "$SLURM_JOB_ID" | grep -oP '(?<=Command=)\S+' || true)"
    repo_root="$(cd "$(dirname "${command:-${BASH_SOURCE[0]}}")/.." && pwd)"
fi
export AURL_REPO="$repo_root"
out="${AURL_OUTPUT_DIR:-$repo_root/outputs}"
out="$(realpath -m "$out")"  # relative to the submit folder; the nodes run in the checkout
if [ "${AURL_SKIP_ENV:-0}" != 1 ]; then  # 1 = an environment is already active
    source "$repo_root/launch/env.sh"
fi
cd "$repo_root"

log "start on ${SLURM_JOB_NODELIST} (${SLURM_JOB_NUM_NODES} node(s)), restart ${SLURM_RESTART_COUNT:-0}, output $out"

if python -m aurl.slurm stage-done --output-dir "$out" --stage "$stage"; then
    log "already completed: nothing to do"
    exit 0
fi

# A requeued stage may go on with fewer nodes (a knob: `scontrol requeue` keeps the job's node count, and the
# job cannot change it on its way out: the requeue ends it at once). Shrinking writes a script that resets
# SLURM_JOB_NUM_NODES and the node list; it is written into the current folder, hence the temporary one.
requeue_nodes="${AURL_REQUEUE_NODES:-}"
if [ -n "$requeue_nodes" ] && ! [[ "$requeue_nodes" =~ ^[1-9][0-9]*$ ]]; then
    log "error: AURL_REQUEUE_NODES=$requeue_nodes: a number of nodes (a whole number >= 1)"
    exit 2
fi
if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ] && [ -n "$requeue_nodes" ] && [ "$requeue_nodes" -lt "$SLURM_JOB_NUM_NODES" ]; then
    resize_dir="$(mktemp -d)"
    (cd "$resize_dir" && scontrol update JobId="$SLURM_JOB_ID" NumNodes="$requeue_nodes" >/dev/null)
    # shellcheck disable=SC1090 # written by scontrol just now
    source "$resize_dir/slurm_job_${SLURM_JOB_ID}_resize.sh"
    rm -rf "$resize_dir"
    log "requeued: going on with $SLURM_JOB_NUM_NODES node(s) ($SLURM_JOB_NODELIST, AURL_REQUEUE_NODES)"
fi

# No --resume: the trainer resumes a stopped stage by itself (--resume would refuse a fresh start).
train_args=(--stage "$stage" --output-dir "$out")
if [ -n "${AURL_CONFIG:-}" ]; then
    train_args+=(--config "${AURL_CONFIG//\{stage\}/$stage}")
fi
if [ -n "${AURL_DATA:-}" ]; then
    train_args+=(--data "$AURL_DATA")
fi
# shellcheck disable=SC2206 # word splitting of the extra arguments is intended
train_args+=(${AURL_TRAIN_ARGS:-})

# The trainer stops by itself (the SIGUSR1 path) a margin before the job's end: the wall clock must not kill
# it mid-step. SLURM >= 23.02 sets SLURM_JOB_END_TIME (seconds since the epoch); older ones do not: set it.
if [ -z "${SLURM_JOB_END_TIME:-}" ]; then
    end_time="$(squeue -h -j "$SLURM_JOB_ID" -o %e 2>/dev/null || true)"
    if [[ "$end_time" =~ ^[0-9]{4}- ]]; then
        SLURM_JOB_END_TIME="$(date -d "$end_time" +%s)"
        export SLURM_JOB_END_TIME
    fi
fi

srun --kill-on-bad-exit=1 --nodes "$SLURM_JOB_NUM_NODES" --ntasks-per-node 1 \
    bash "$repo_root/launch/slurm_node.sh" "${train_args[@]}" &
step=$!
# A trapped signal interrupts `wait`; wait again until srun is gone. Once stopping, forward again every 2 s:
# a signal that came before the job step (or its launchers) started reaches the trainer once it listens.
while kill -0 "$step" 2>/dev/null; do
    if [ "$stopping" = 1 ]; then
        scancel --signal=USR1 "$SLURM_JOB_ID" 2>/dev/null || true
        sleep 2 &
        wait $! || true
    else
        wait "$step" || true
    fi
done
wait "$step" && rc=0 || rc=$?
trap - USR1 TERM

status="$(python -m aurl.slurm stage-status --output-dir "$out" --stage "$stage" || echo unknown)"
log "srun exited with $rc; stage status: $status"
if [ "$status" = completed ]; then
    exit 0
fi
# The trainer's own exit code does not survive accelerate launch (torchrun reports every failed worker as 1):
# the state file says whether the stage stopped early with a committed checkpoint.
if [ "$preempted" = 1 ] || [ "$rc" = 75 ] || [ "$status" = stopped ]; then
    if [ "$stopping" = 1 ] && [ "$preempted" = 0 ]; then
        log "stopped by SIGTERM: not requeued here"
        exit 75
    fi
    log "stopped early: requeueing job $SLURM_JOB_ID (it resumes from the last committed checkpoint)"
    scontrol requeue "$SLURM_JOB_ID"
    exit 75
fi
if [ "$rc" = 0 ]; then
    log "the trainer exited 0 but the stage is not completed"
    exit 1
fi
exit "$rc"
