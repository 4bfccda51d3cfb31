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

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_and_records_every_step(tmp_path):
    results = tmp_path / "RESULTS.md"
    results.write_text("# earlier results\n")
    env = {**os.environ, "PYTHON": sys.executable, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("ACCELERATE_USE_CPU", None)
    r = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--cpu", "--results", str(results)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
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
