#!/usr/bin/env bash
#SBATCH --job-name=aurl-pipeline
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --time=00:10:00
# The whole pipeline on SLURM: submits one job per stage (slurm/stage.sh), chained with
# --dependency=afterok (a failed stage cancels the ones after it: --kill-on-invalid-dep=yes), prints the job
# ids and records them in the run's state file (`python -m aurl.train --status` shows their SLURM state).
#   sbatch slurm/pipeline.sh          or, outside a job, the same:   bash slurm/pipeline.sh
#   AURL_NODES=4 AURL_GPUS_PER_NODE=8 AURL_PARTITION=gpu AURL_TIME=2-00:00:00 sbatch slurm/pipeline.sh
# Knobs (environment; the stage jobs inherit them):
#   AURL_NODES              nodes per stage job                                     (default 1)
#   AURL_REQUEUE_NODES      nodes a stage job goes on with once it has been requeued (preempted, out of
#                           time): it gives the others back and resumes elastically (global batch and
#                           sample order kept; aurl/train/elastic.py)               (default: all it has)
#   AURL_GPUS_PER_NODE      GPUs per node = training processes per node; 0 = CPU    (default 1)
#   AURL_PROCS_PER_NODE     processes per node when AURL_GPUS_PER_NODE=0            (default 1)
#   AURL_PARTITION          partition                                               (default: the cluster's)
#   AURL_ACCOUNT            account to charge                                       (default: yours)
#   AURL_TIME               time limit per stage job; a stage that runs out requeues itself and resumes
#                                                                                   (default 12:00:00)
#   AURL_SIGNAL_SECONDS     SIGUSR1 this long before the time limit: save, requeue  (default 300)
#   AURL_ACCELERATE_CONFIG  file or name in accelerate_configs/                     (default multi_node)
#   AURL_CONFIG             training config; "{stage}" becomes the stage number     (default: the trainer's)
#   AURL_DATA               MIDI folder                                             (default: Bach corpus)
#   AURL_OUTPUT_DIR         run output (state file, checkpoints, logs/slurm/)       (default <repo>/outputs)
#   AURL_STAGES             stages to submit, in order                              (default "1 2 3")
#   AURL_TRAIN_ARGS         more aurl.train arguments, e.g. key=value overrides     (default none)
#   AURL_SBATCH_ARGS        more sbatch options for every stage job, e.g. "--qos=high --exclusive"
#   AURL_SKIP_ENV           1 = use the python/accelerate on PATH, do not set up .venv    (default 0)
set -euo pipefail

# Under sbatch this is a copy in the spool folder: find the checkout from the job's Command.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -f "$here/slurm/stage.sh" ]; then
    repo_root="$here"
else
    command="$(scontrol show job -o "${SLURM_JOB_ID:?}" | grep -oP '(?<=Command=)\S+')"
    repo_root="$(cd "$(dirname "$command")/.." && pwd)"
fi

nodes="${AURL_NODES:-1}"
for knob in AURL_NODES AURL_REQUEUE_NODES; do
    value="${!knob:-1}"
    if ! [[ "$value" =~ ^[1-9][0-9]*$ ]]; then
        echo "[aurl] error: $knob=$value: a number of nodes (a whole number >= 1)" >&2
        exit 2
    fi
done
gpus="${AURL_GPUS_PER_NODE:-1}"
out="$(realpath -m "${AURL_OUTPUT_DIR:-$repo_root/outputs}")"
stages="${AURL_STAGES:-1 2 3}"
mkdir -p "$out/logs/slurm"

# The stage jobs read these; pass the resolved values on so they do not depend on where they start.
export AURL_REPO="$repo_root" AURL_OUTPUT_DIR="$out" AURL_GPUS_PER_NODE="$gpus"
# Submitted from inside a job (sbatch slurm/pipeline.sh): this job's SLURM_* variables must not leak into
# the stage jobs' environment (srun would read e.g. SLURM_NTASKS and SLURM_CPUS_PER_TASK of this job).
pipeline_job="${SLURM_JOB_ID:-}"
if [ -n "$pipeline_job" ]; then
    while read -r var; do
        [ "$var" = SLURM_CONF ] || unset "$var"
    done < <(compgen -e | grep '^SLURM_' || true)
fi

common=(--parsable --nodes "$nodes" --ntasks-per-node 1 --time "${AURL_TIME:-12:00:00}"
    --signal "B:USR1@${AURL_SIGNAL_SECONDS:-300}" --requeue --open-mode append --kill-on-invalid-dep yes
    --output "$out/logs/slurm/%x-%j.out" --chdir "$repo_root")
[ -z "${AURL_PARTITION:-}" ] || common+=(--partition "$AURL_PARTITION")
[ -z "${AURL_ACCOUNT:-}" ] || common+=(--account "$AURL_ACCOUNT")
[ "$gpus" = 0 ] || common+=(--gpus-per-node "$gpus")
# shellcheck disable=SC2206 # word splitting of the extra options is intended
common+=(${AURL_SBATCH_ARGS:-})

# The first stage is submitted held and released once the ids are recorded: the record must not race
# with a stage that starts at once and writes the state file too.
ids=()
jobs_args=()
previous=""
for stage in $stages; do
    args=("${common[@]}" --job-name "aurl-stage$stage")
    if [ -z "$previous" ]; then
        args+=(--hold)
    else
        args+=(--dependency "afterok:$previous")
    fi
    if ! id="$(sbatch "${args[@]}" "$repo_root/slurm/stage.sh" "$stage")"; then
        echo "[aurl] error: sbatch of stage $stage failed; cancelling the jobs submitted so far: ${ids[*]:-none}" >&2
        [ "${#ids[@]}" = 0 ] || scancel "${ids[@]}"
        exit 1
    fi
    id="${id%%;*}"  # --parsable prints "id" or "id;cluster"
    ids+=("$id")
    jobs_args+=(--job "$stage=$id")
    previous="$id"
done

[ "${AURL_SKIP_ENV:-0}" = 1 ] || source "$repo_root/launch/env.sh" >&2
record_rc=0
python -m aurl.slurm record --output-dir "$out" "${jobs_args[@]}" ${pipeline_job:+--pipeline-job "$pipeline_job"} \
    || record_rc=$?
scontrol release "${ids[0]}"

echo "[aurl] submitted stages ${stages// /, } as jobs ${ids[*]} (logs in $out/logs/slurm/)" >&2
echo "${ids[*]}"
if [ "$record_rc" != 0 ]; then
    echo "[aurl] warning: the job ids could not be recorded in $out (python -m aurl.slurm record)" >&2
fi
