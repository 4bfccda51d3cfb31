"""bench/gpu_check.sh --cpu: the one-shot GPU check runs end to end at tiny sizes on CPU (so it cannot rot
before a GPU is lent) and appends one section, with the device name and the date, holding every step's
figures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ensure_deepspeed_op

REPO = Path(__file__).resolve().parents[1]
# test_deepspeed's op folder: step 2b (DeepSpeed) then finds the op built, not building it within its limit
EXTENSIONS = os.environ.get("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "torch_extensions"))


def run_check(results: Path, *args: str, python: Path | str = sys.executable) -> subprocess.CompletedProcess:
    """bash bench/gpu_check.sh --cpu --results RESULTS ARGS..., its steps run by `python`, without the test
    environment's ACCELERATE_USE_CPU (the check's launches set what they need)."""
    env = {**os.environ, "PYTHON": str(python), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "TORCH_EXTENSIONS_DIR": EXTENSIONS}
    env.pop("ACCELERATE_USE_CPU", None)
    return subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--cpu", "--results", str(results), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def step_seconds(text: str) -> dict[str, int]:
    """{step id: seconds} from the '(step ID: N s of its L s limit)' line each step that ran prints."""
    return {m[0]: int(m[1]) for m in re.findall(r"^\(step (\w+): (\d+) s of its \d+ s limit\)$", text, re.M)}


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_and_records_every_step(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# earlier results\n")
    ensure_deepspeed_op({**os.environ, "TORCH_EXTENSIONS_DIR": EXTENSIONS})
    r = run_check(results)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    text = results.read_text()
    assert text.startswith("# earlier results\n")  # appended, nothing replaced
    head = re.search(r"^## GPU check \(bench/gpu_check.sh --cpu\): CPU .+, \d{4}-\d\d-\d\d \d\d:\d\d UTC$", text, re.M)
    assert head, text[:500]
    # every step --cpu runs printed its figures: trainer and bare rates, the DeepSpeed launch,
    # both memory variants, both generation batches
    rates = re.findall(r"^1\s+transformer", text, re.M)
    assert len(rates) == 2, text  # --cpu: stage 1 plain and under deepspeed_zero2
    assert len(re.findall(r"^bf16\s+(off|on)\s+[\d,]+", text, re.M)) == 2
    assert len(re.findall(r"^batch +(1|16): [\d,]+ tokens/s", text, re.M)) == 2
    # each step says how long it took (what the GPU limits are set from); --cpu has no step 2a
    assert sorted(step_seconds(text)) == ["1", "2b", "3", "4"], text


@pytest.mark.slow
def test_gpu_check_runs_only_the_steps_it_is_given(tmp_path):
    """--steps 3,4: a second GPU run after a fix can take only the steps that failed; the section says so."""
    results = tmp_path / "RESULTS.md"
    r = run_check(results, "--steps", "3,4")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    text = results.read_text()
    assert re.search(r"^## GPU check \(bench/gpu_check.sh --cpu --steps 3,4\): CPU ", text, re.M), text[:500]
    assert re.findall(r"^### (\w+)\.", text, re.M) == ["3", "4"], text
    assert sorted(step_seconds(text)) == ["3", "4"], text
    assert len(re.findall(r"^bf16\s+(off|on)\s+[\d,]+", text, re.M)) == 2, text
    assert len(re.findall(r"^batch +(1|16): [\d,]+ tokens/s", text, re.M)) == 2, text


@pytest.mark.parametrize("steps, line", [
    ("1,5", "gpu_check.sh: --steps 1,5: unknown step 5 (known: 1, 2a, 2b, 3, 4)"),
    ("2a", "gpu_check.sh: --steps 2a: step 2a does not run with --cpu"),
], ids=["unknown", "2a-on-cpu"])
def test_gpu_check_refuses_a_step_it_cannot_run_before_any_step(tmp_path, steps, line):
    results = tmp_path / "RESULTS.md"
    r = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--cpu", "--steps", steps,
                        "--results", str(results)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stderr.strip(), r.stdout) == (2, line, "")
    assert not results.exists()


@pytest.mark.slow
def test_gpu_check_records_a_failing_step_and_goes_on(tmp_path):
    """A step that fails does not cost the others (a GPU lease has one try): the check records the step's
    name and exit code, runs the next steps, still appends its section, and exits 1. The failure is a real
    one: PYTHON is a wrapper that refuses to run bench/bench_train.py (steps 1 and 2b) and runs everything
    else with this Python, so steps 3 and 4 still measure."""
    wrapper = tmp_path / "python"
    wrapper.write_text("#!/usr/bin/env bash\n"
                       "if [ \"${1:-}\" = bench/bench_train.py ]; then echo 'no bench_train here' >&2; exit 3; fi\n"
                       f"exec {sys.executable} \"$@\"\n")
    wrapper.chmod(0o755)
    results = tmp_path / "RESULTS.md"
    results.write_text("# earlier results\n")
    r = run_check(results, python=wrapper)
    assert r.returncode == 1, r.stdout[-3000:] + r.stderr[-3000:]
    text = results.read_text()
    assert text.startswith("# earlier results\n\n## GPU check (bench/gpu_check.sh --cpu): CPU "), text[:500]
    step1 = "1. training tokens/s and MFU: plain trainer vs train.compile=true, bf16"
    step2b = "2b. accelerate launch, accelerate_configs/deepspeed_zero2.yaml, 1 process"
    for name in (step1, step2b):
        assert f"\nno bench_train here\nFAILED: {name}: exit 3\n" in text, text
    assert f"FAILED steps: {step1} (exit 3); {step2b} (exit 3)\n```" in text
    # the steps after the failures ran and printed their figures
    assert len(re.findall(r"^bf16\s+(off|on)\s+[\d,]+", text, re.M)) == 2, text
    assert len(re.findall(r"^batch +(1|16): [\d,]+ tokens/s", text, re.M)) == 2, text
    assert "2 step(s) failed" in r.stderr


def test_gpu_check_refuses_a_results_file_in_a_missing_folder_before_any_step(tmp_path):
    """--results in a folder that does not exist: one line and exit 2 at once, not after minutes of steps
    whose figures could not then be written."""
    missing = tmp_path / "nowhere" / "RESULTS.md"
    r = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--cpu", "--results", str(missing)],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == f"gpu_check.sh: --results {missing}: its folder {missing.parent} does not exist"
    assert r.stdout == ""
