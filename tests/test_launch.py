"""launch/run.sh: which accelerate config and flags it picks (a stub `accelerate` records them), and a real
two-process CPU launch of the trainer."""

from __future__ import annotations

import os
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
