"""launch/run.sh: which accelerate config and flags it picks (a stub `accelerate` records them), and a real
two-process CPU launch with a probe script and the same flags (tests/test_train_pipeline.py trains through
run.sh with two processes)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "launch" / "run.sh"


@pytest.fixture
def stub_accelerate(tmp_path):
    """PATH with an `accelerate` that prints its arguments and ACCELERATE_USE_CPU instead of launching."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "accelerate"
    stub.write_text('#!/bin/sh\necho "ACCELERATE_USE_CPU=${ACCELERATE_USE_CPU:-unset}"\necho "$@"\n')
    stub.chmod(0o755)
    python_dir = Path(sys.executable).parent  # the venv's python (torch for the GPU count)
    env = dict(os.environ, PATH=f"{bin_dir}:{python_dir}:{os.environ['PATH']}", AURL_SKIP_ENV="1")
    for var in ("AURL_ACCELERATE_CONFIG", "AURL_NUM_PROCESSES", "ACCELERATE_USE_CPU", "CUDA_VISIBLE_DEVICES"):
        env.pop(var, None)
    return env


def _run(env, *args, **knobs):
    return subprocess.run(["bash", str(RUN), *args], env=dict(env, **knobs), capture_output=True, text=True,
                          timeout=60)


@pytest.mark.skipif(sys.platform != "linux", reason="bash launcher")
def test_no_gpu_means_two_cpu_processes(stub_accelerate):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = _run(stub_accelerate, "--stage", "1", "train.max_steps=3")
    assert r.returncode == 0, r.stderr
    env_line, args = r.stdout.splitlines()
    assert env_line == "ACCELERATE_USE_CPU=1"
    assert args == ("launch --config_file accelerate_configs/cpu.yaml --mixed_precision no --num_processes 2 "
                    "--num_machines 1 -m aurl.train --stage 1 train.max_steps=3")


def test_config_override_by_name_and_deepspeed_keeps_accelerate_off_cpu_mode(stub_accelerate):
    r = _run(stub_accelerate, "--stage", "2", AURL_ACCELERATE_CONFIG="deepspeed_zero3", AURL_NUM_PROCESSES="3")
    assert r.returncode == 0, r.stderr
    env_line, args = r.stdout.splitlines()
    # ACCELERATE_USE_CPU=1 would make accelerate drop DeepSpeed: the trainer picks gloo itself on CPU.
    assert env_line == "ACCELERATE_USE_CPU=unset"
    assert args.startswith("launch --config_file accelerate_configs/deepspeed_zero3.yaml")
    assert "--num_processes 3 --num_machines 1 -m aurl.train --stage 2" in args


def test_unknown_config_is_one_line_and_exit_2(stub_accelerate):
    r = _run(stub_accelerate, AURL_ACCELERATE_CONFIG="zero9")
    assert r.returncode == 2 and "zero9" in r.stderr and "deepspeed_zero2" in r.stderr and not r.stdout


@pytest.mark.skipif(sys.platform != "linux", reason="bash launcher")
def test_one_cpu_process_runs_the_trainer_itself_and_a_one_process_config_refuses_two(stub_accelerate, tmp_path):
    """AURL_NUM_PROCESSES=1 without a GPU: plain `python -m aurl.train` (no accelerate: the stub would print
    its arguments), here the read-only --status. A config of one process ('NO', single_gpu) asked for two:
    one line naming both, exit 2, before any launch."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = tmp_path / "run"
    r = _run(stub_accelerate, "--status", "--output-dir", str(out), AURL_NUM_PROCESSES="1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"no run in {out}"] and "one CPU process: python -m aurl.train" in r.stderr
    r = _run(stub_accelerate, "--stage", "1", AURL_ACCELERATE_CONFIG="single_gpu", AURL_NUM_PROCESSES="2")
    assert r.returncode == 2 and not r.stdout, (r.stdout, r.stderr)
    assert r.stderr.splitlines() == ["[aurl] error: accelerate_configs/single_gpu.yaml runs one process; 2 need "
                                     "another config (AURL_ACCELERATE_CONFIG)"], r.stderr


def test_every_accelerate_config_parses_and_names_its_command():
    from accelerate.commands.config.config_args import load_config_from_file

    names = sorted(p.stem for p in (REPO / "accelerate_configs").glob("*.yaml"))
    assert names == ["cpu", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload", "multi_gpu",
                     "multi_node", "single_gpu"]
    for name in names:
        path = REPO / "accelerate_configs" / f"{name}.yaml"
        cfg = load_config_from_file(str(path))
        assert cfg.compute_environment.value == "LOCAL_MACHINE", name
        assert any(cmd in path.read_text() for cmd in ("accelerate launch", "sbatch slurm/pipeline.sh")), name
        if name.startswith("deepspeed"):
            assert cfg.deepspeed_config["zero_stage"] == int(name[len("deepspeed_zero")])
            assert cfg.deepspeed_config["deepspeed_multinode_launcher"] == "standard"


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="bash launcher")
def test_the_cpu_command_really_starts_two_connected_processes(stub_accelerate, tmp_path):
    """The exact `accelerate launch` flags run.sh builds without a GPU, run for real with a tiny script in
    place of `-m aurl.train`: two processes, one gloo group (an all-reduce over both ranks). The script also
    runs the two small collectives the trainer's ranks agree by: a stop request that reached rank 1 alone
    (SIGUSR1) stops both at the same step boundary (StopFlag.should_stop), and the discriminator's gradient
    averaged over the ranks under DeepSpeed (average_gradients: (1 + 2) / 2 on both)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = _run(stub_accelerate, "--stage", "1")
    env_line, args = r.stdout.splitlines()
    flags = args.split()
    flags = flags[1:flags.index("-m")]  # drop "launch" and the trainer
    script = tmp_path / "probe.py"
    script.write_text(
        "import torch, torch.distributed as dist\n"
        "from accelerate import Accelerator\n"
        "acc = Accelerator()\n"
        "t = torch.tensor([acc.process_index + 1.0])\n"
        "dist.all_reduce(t)\n"
        "print(f'rank {acc.process_index}/{acc.num_processes} {acc.device} {dist.get_backend()} sum {t.item()}')\n"
        "import os, signal\n"
        "from aurl.train.distributed import average_gradients\n"
        "from aurl.train.preemption import StopFlag\n"
        "flag = StopFlag().install()\n"
        "before = flag.should_stop(acc)\n"
        "if acc.process_index == 1:\n"
        "    os.kill(os.getpid(), signal.SIGUSR1)\n"
        "after = flag.should_stop(acc)\n"
        "p = torch.nn.Parameter(torch.zeros(3))\n"
        "p.grad = torch.full((3,), acc.process_index + 1.0)\n"
        "average_gradients([p], acc)\n"
        "print(f'rank {acc.process_index} stop {before} {after} {flag.requested} grad {p.grad.tolist()}')\n"
        # a group left to the interpreter's exit sometimes aborts in gloo's destructor (seen once in a full run:
        # 'terminate called without an active exception', SIGABRT): tear it down like the trainer does
        "dist.barrier()\n"
        "dist.destroy_process_group()\n")
    env = dict(os.environ, ACCELERATE_USE_CPU=env_line.partition("=")[2],
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    accelerate = Path(sys.executable).parent / "accelerate"
    p = subprocess.run([str(accelerate), "launch", *flags, str(script)], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    # The two processes share one pipe: their lines may interleave.
    ranks = sorted(re.findall(r"rank (\d)/(\d) cpu\S* gloo sum (\S+?)(?=rank|$|\s)", p.stdout))
    assert ranks == [("0", "2", "3.0"), ("1", "2", "3.0")], p.stdout
    agreed = sorted(re.findall(r"rank (\d) stop (\w+) (\w+) (\w+) grad (\[[^]]*\])", p.stdout))
    assert agreed == [("0", "False", "True", "None", "[1.5, 1.5, 1.5]"),
                      ("1", "False", "True", "SIGUSR1", "[1.5, 1.5, 1.5]")], p.stdout


@pytest.mark.skipif(sys.platform != "linux", reason="bash launcher")
def test_quickstart_sets_up_the_environment_and_passes_its_arguments_to_the_trainer(tmp_path):
    """launch/quickstart.sh (the README's main command): launch/env.sh (idempotent: the suite's own .venv), then
    `python -m aurl.train` from the repository root with every argument; here the read-only --status of an
    empty output dir, started from another folder with only the system's folders on PATH (no `python` there
    but the one env.sh puts first)."""
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = "/usr/bin:/bin"
    r = subprocess.run(["bash", str(REPO / "launch" / "quickstart.sh"), "--status", "--output-dir", str(out)],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.splitlines() == [f"no run in {out}"], r.stdout
    assert not out.exists()
