"""The benchmark runner: script discovery, flag filtering, live capture, timeouts and the results file."""

from __future__ import annotations

import math
import os
import time

import pytest

from aurl import bench

SCRIPT = '''
import argparse, time
p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=1)
p.add_argument("--sleep", type=float, default=0)
a = p.parse_args()
print(f"figure: {a.steps * 10} tokens/s")
time.sleep(a.sleep)
'''


def test_the_repository_scripts_are_found():
    scripts = bench.find_scripts()
    assert "data" in scripts and "model" in scripts
    assert all(p.name == f"bench_{n}.py" for n, p in scripts.items())


def test_run_script_captures_output_and_filters_flags(tmp_path):
    script = tmp_path / "bench_fake.py"
    script.write_text(SCRIPT)
    assert bench.find_scripts(tmp_path) == {"fake": script}
    args = bench._supported(script, ["--steps", "3", "--device", "cuda"])
    assert args == ["--steps", "3"]  # the script takes no --device
    rc, out, seconds = bench.run_script(script, args, timeout_s=60)
    assert rc == 0 and "figure: 30 tokens/s" in out and seconds > 0


def test_run_script_stops_a_hung_script(tmp_path):
    script = tmp_path / "bench_slow.py"
    script.write_text(SCRIPT)
    rc, out, seconds = bench.run_script(script, ["--sleep", "30"], timeout_s=2)
    assert rc == 124 and "figure: 10 tokens/s" in out and "stopped after" in out and seconds < 20



def test_a_timeout_also_stops_the_scripts_children(tmp_path):
    script = tmp_path / "bench_parent.py"
    pid_file = tmp_path / "child.pid"
    script.write_text("import subprocess, sys, time\n"
                      "c = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
                      f"open({str(pid_file)!r}, 'w').write(str(c.pid))\n"
                      "print('started', flush=True)\ntime.sleep(60)\n")
    rc, out, _ = bench.run_script(script, [], timeout_s=3)
    assert rc == 124 and "started" in out
    child = int(pid_file.read_text())
    for _ in range(50):  # killed at once; reaped by init shortly after
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(child, 9)
        raise AssertionError("the script's child outlived the timeout")

def test_results_keep_one_section_per_device_and_script(tmp_path):
    path = tmp_path / "RESULTS.md"
    ok = bench.format_run("fake", ["--steps", "3"], 0, "figure: 30 tokens/s\n", 1.0, "python -m aurl.bench")
    other = bench.format_run("other", [], 0, "other figure\n", 1.0, "python -m aurl.bench")
    bench.update_results(path, "CPU: x", {"fake": ok, "other": other})
    bench.update_results(path, "GPU: y", {"fake": ok})
    failed = bench.format_run("fake", [], 1, "boom\n", 2.0, "python -m aurl.bench --only fake")
    bench.update_results(path, "CPU: x", {"fake": failed})
    text = path.read_text()
    assert text.startswith(bench.TITLE)
    assert text.count("## CPU: x") == 1 and text.count("## GPU: y") == 1
    cpu = text[text.index("## CPU: x"):text.index("## GPU: y")]
    assert "boom" in cpu and "FAILED (exit 1)" in cpu and "other figure" in cpu and "30 tokens/s" not in cpu
    assert "figure: 30 tokens/s" in text[text.index("## GPU: y"):]  # the GPU section kept its own


def test_unknown_script_is_exit_2(capsys):
    assert bench.main(["--only", "nosuch", "--no-write"]) == 2
    assert "no script named nosuch" in capsys.readouterr().err


def test_flag_errors_are_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        bench.main(["--timeout", "soon"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--timeout" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_peer_comparison_runs_both_sides_in_fast_mode():
    """bench_peer.py end to end at a tiny budget: the real aurl trainer and the transformers Llama on REMI tokens,
    both scored on the same validation pieces; the table, the ratio and parameter counts within 15 %."""
    import re

    script = bench.find_scripts()["peer"]
    rc, out, _ = bench.run_script(script, ["--steps", "2", "--corpus-limit", "6", "--batch-size", "4"], timeout_s=600)
    assert rc == 0, out[-3000:]
    table = [line.split() for line in out.splitlines() if line.startswith(("aurl stage 1 ", "Llama + MidiTok REMI "))]
    assert len(table) == 2, out
    scored = int(re.search(r"\((\d+) scored, ([\d,]+) notes", out)[1])
    assert scored >= 1  # zero pieces compared would be no comparison
    params, nats_per_note = [], []
    for cells in table:
        params.append(int(cells[-9].replace(",", "")))
        assert int(cells[-7].replace(",", "")) > 0  # validation tokens scored
        nats_per_note.append(float(cells[-4]))
    assert all(math.isfinite(x) and x > 0 for x in nats_per_note)
    assert abs(params[1] / params[0] - 1) <= 0.15
    ratio = float(re.search(r"nats/note aurl / peer = ([\d.]+)", out)[1])
    assert ratio == pytest.approx(nats_per_note[0] / nats_per_note[1], rel=1e-3)
    assert "2 optimizer steps" in out and "batch 4" in out  # the same budget on both sides
