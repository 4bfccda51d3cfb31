"""`python -m aurl.bench`: run every benchmark script in bench/ once and collect what they print.

    python -m aurl.bench                      # all of bench/bench_*.py, results into bench/RESULTS.md
    python -m aurl.bench --only data,model    # some of them
    python -m aurl.bench --quick              # smaller budgets (a smoke run; figures are noisier)
    python -m aurl.bench --device cuda        # passed to the scripts that take --device

Each script measures one part next to its baseline and prints its own table: bench_data.py (ingest vs
MidiTok, loader tokens/s), bench_model.py (generation with vs without the KV cache, forward+backward
tokens/s per stage), bench_train.py (the aurl train step vs a bare PyTorch loop; on a GPU tokens/s and MFU),
bench_peer.py (aurl's stage 1 vs a same-size Llama on MidiTok REMI tokens, trained the same way: validation
nats per note), bench_ablation.py (stage 3 with vs without its adversarial term: latent, discriminator and
music metrics).
bench_soak.py (the quickstart pipeline killed -9 twenty times and resumed, compared bitwise with an
uninterrupted run; ~2-3x the quickstart's time, so run it alone: `--only soak`).
bench_corpus.py (a synthetic 100,000-file corpus built into the cache: files/s, tokens/s, peak RSS, manifest
size and load time, no-op and one-file rebuilds, the loader's first batch; ~30 min on 2 cores the first time).
This command runs them one after another in fresh processes (same Python, repository root as working
directory), shows their output live and writes it to bench/RESULTS.md: one section per device, in it one
subsection per script with the date and commit. A run replaces only the subsections of the scripts it ran,
on its own device (the CPU figures stay when a GPU run is added; `--only train` keeps the data figures).

Exit codes: 0 every script succeeded, 1 one failed or timed out (its output is still recorded), 2 bad input.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from aurl.console import PREFIX, ArgParser, UserError, print0

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO_ROOT / "bench"
RESULTS = BENCH_DIR / "RESULTS.md"
TITLE = "# aurl benchmarks"
# smaller budgets for --quick, by script; a flag is passed only when the script's --help lists it
QUICK_ARGS = {
    "data": ["--samples", "500"],
    "model": ["--gen-tokens", "256", "--steps", "1", "--batch", "2"],
    "train": ["--steps", "3"],
    "peer": ["--steps", "20"],
    "ablation": ["--steps", "10"],
    "soak": ["--fast"],
    "corpus": ["--files", "2000"],
}


def find_scripts(bench_dir: Path = BENCH_DIR) -> dict[str, Path]:
    """{name: path} of bench/bench_<name>.py, sorted by name."""
    return {p.stem.removeprefix("bench_"): p for p in sorted(bench_dir.glob("bench_*.py"))}


def _supported(script: Path, args: list[str]) -> list[str]:
    """The flags (with their values) among `args` that the script's --help mentions."""
    try:
        helptext = subprocess.run([sys.executable, str(script), "--help"], cwd=REPO_ROOT, capture_output=True,
                                  text=True, timeout=120).stdout
    except subprocess.TimeoutExpired:
        return []
    out, i = [], 0
    while i < len(args):
        flag = args[i]
        value = args[i + 1 : i + 2] if i + 1 < len(args) and not args[i + 1].startswith("--") else []
        if re.search(rf"(^|\s|\[){re.escape(flag)}(\s|=|\]|,|$)", helptext, re.M):
            out += [flag, *value]
        i += 1 + len(value)
    return out


def run_script(script: Path, args: list[str], timeout_s: float) -> tuple[int, str, float]:
    """Run one script, echoing its output live; -> (exit code, output, seconds). 124 = timed out."""
    import threading

    cmd = [sys.executable, "-u", str(script), *args]
    t0 = time.perf_counter()
    # its own process group, so that a timeout also stops what the script started (e.g. python -m aurl.train)
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, start_new_session=True)
    timed_out = threading.Event()

    def stop() -> None:  # a watchdog: a silent, hung script must not hold the whole run
        timed_out.set()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    watchdog = threading.Timer(timeout_s, stop)
    watchdog.start()
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            lines.append(line)
        rc = proc.wait()
    finally:
        watchdog.cancel()
    if timed_out.is_set():
        lines.append(f"\n(stopped after {timeout_s:.0f} s)\n")
        rc = 124
    return rc, "".join(lines), time.perf_counter() - t0


def device_label(device: str) -> str:
    """A one-line description of the machine the figures come from."""
    if device.startswith("cuda"):
        try:
            import torch

            if torch.cuda.is_available():
                idx = torch.device(device).index or 0
                return f"GPU: {torch.cuda.get_device_name(idx)} (torch {torch.__version__})"
        except Exception:  # noqa: BLE001 - fall back to the CPU description
            pass
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        import torch

        tv = f", torch {torch.__version__}, {torch.get_num_threads()} threads"
    except ImportError:
        tv = ""
    return f"CPU: {cpu} ({cores} cores available{tv})"


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + (" (with local changes)" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def format_run(name: str, args: list[str], rc: int, output: str, seconds: float, command: str) -> str:
    """The markdown subsection of one script's run (heading, when, commit, its output verbatim)."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    status = "ok" if rc == 0 else ("TIMED OUT" if rc == 124 else f"FAILED (exit {rc})")
    shown = " ".join(["bench/bench_" + name + ".py", *args])
    return "\n".join([f"### {name}", "", f"`{shown}`: {status} in {seconds:.0f} s; {when}, commit {_commit()}, "
                      f"run by `{command}`", "", "```text", output.rstrip(), "```", ""])


def _split(text: str, level: str) -> tuple[str, list[str]]:
    """(text before the first heading of `level` ("## " or "### "), [each such section])."""
    chunks = re.split(rf"(?m)^(?={level})", text)
    head = chunks[0] if chunks and not chunks[0].startswith(level) else ""
    return head, [c for c in chunks if c.startswith(level)]


def update_results(path: Path, label: str, runs: dict[str, str]) -> None:
    """Put each script's subsection (format_run) under the device section `label`, replacing that script's
    previous one there; other scripts' figures and other devices' sections are kept."""
    from aurl.atomic import atomic_write_text

    head, devices = _split(path.read_text() if path.is_file() else "", "## ")
    if not head.strip():
        head = (f"{TITLE}\n\nWritten by `python -m aurl.bench` (see aurl/bench.py): each script prints its "
                "figures next to their baseline. One section per device, one subsection per script; a run "
                "replaces only the subsections of the scripts it ran on its own device.\n")
    heading = f"## {label}"
    old = next((d for d in devices if d.splitlines()[0].strip() == heading), None)
    scripts: dict[str, str] = {}
    if old is not None:
        _, subs = _split(old, "### ")
        scripts = {sub.splitlines()[0][4:].strip(): sub for sub in subs}
    scripts.update(runs)
    section = heading + "\n\n" + "".join(scripts[k].rstrip() + "\n\n" for k in sorted(scripts))
    devices = [section if d is old else d for d in devices] if old is not None else [*devices, section]
    atomic_write_text(path, head.rstrip() + "\n\n" + "".join(d.rstrip() + "\n\n" for d in devices).rstrip() + "\n")


def _parser() -> argparse.ArgumentParser:
    p = ArgParser(prog="python -m aurl.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help="comma-separated scripts to run, by name (data,model,peer,train); "
                                               "default: every bench/bench_*.py")
    p.add_argument("--quick", action="store_true", help="smaller budgets per script (a smoke run)")
    p.add_argument("--device", default=None,
                   help="cpu or cuda, passed as --device to the scripts that take it (default: their own)")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds one script may run before it is stopped")
    p.add_argument("--results", type=Path, default=RESULTS, help="markdown file to write (default: bench/RESULTS.md)")
    p.add_argument("--no-write", action="store_true", help="only print; leave the results file alone")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        scripts = find_scripts()
        if not scripts:
            raise UserError(f"no bench/bench_*.py scripts in {BENCH_DIR} (run from a source checkout)")
        names = [n.strip() for n in args.only.split(",") if n.strip()] or list(scripts)
        unknown = [n for n in names if n not in scripts]
        if unknown:
            raise UserError(f"--only: no script named {', '.join(unknown)} (have: {', '.join(scripts)})")
        if args.timeout <= 0:
            raise UserError(f"--timeout must be > 0 seconds, got {args.timeout}")
    except UserError as e:
        print(f"{PREFIX} error: {e}", file=sys.stderr, flush=True)
        return 2
    label = device_label(args.device or "cpu")
    print0(label)
    runs = []
    for name in names:
        wanted = (QUICK_ARGS.get(name, []) if args.quick else []) + (["--device", args.device] if args.device else [])
        script_args = _supported(scripts[name], wanted) if wanted else []
        print0(f"--- bench/bench_{name}.py {' '.join(script_args)}")
        rc, output, seconds = run_script(scripts[name], script_args, args.timeout)
        runs.append((name, script_args, rc, output, seconds))
        print0(f"--- {name}: {'ok' if rc == 0 else f'exit {rc}'} in {seconds:.0f} s")
    command = " ".join(["python -m aurl.bench", *(sys.argv[1:] if argv is None else argv)])
    if not args.no_write:
        update_results(args.results, label, {r[0]: format_run(*r, command) for r in runs})
        print0(f"results written to {args.results}")
    return 0 if all(r[2] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
