"""Ablation (not a test): stage 3 with and without its adversarial term, same length, side by side.

    python bench/bench_ablation.py [--run outputs] [--config configs/training_configs/quickstart]
                                   [--steps 0] [--work DIR] [--parallel]

What the discriminator buys: two stage-3 runs of the trainer (`python -m aurl.train --stage 3`), both from
the same stage-2 best weights (RUN/checkpoints/stage2/best.pt; with no such file, stages 1 and 2 are run first
into RUN), the same cache, seed, data order and number of steps; the only difference is
`stage3.model.adv_weight_max=0` in the second (its discriminator still trains, so its accuracy is still measured,
but the generator gets no adversarial gradient). Each run's stage-end evaluation (the config's `eval:`
section: validation bound, samples, music metrics against the validation data) is then printed side by side:
negative ELBO, the latent's figures, the discriminator's accuracy on real and generated windows, grammar and
valid MIDI, and every music metric with its overlap with the data distribution (higher = closer to the data).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "training_configs" / "quickstart"
VARIANTS = {"with adversarial": [], "without (adv_weight_max=0)": ["stage3.model.adv_weight_max=0"]}


def _cmd(config: Path, out: Path, stage_args: list[str], extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "aurl.train", "--config", str(config), "--output-dir", str(out), "--tracker",
            "none", "logging.progress_bar=false", *stage_args, *extra]


def _wait(proc: subprocess.Popen, t0: float) -> float:
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(proc.args)} failed ({proc.returncode}):\n{err[-3000:]}")
    return time.perf_counter() - t0


def train(config: Path, out: Path, stage_args: list[str], extra: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.Popen(_cmd(config, out, stage_args, extra), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    return _wait(proc, t0)


def ensure_stage2(run: Path, config: Path) -> Path:
    best = run / "checkpoints" / "stage2" / "best.pt"
    if not best.is_file():
        print(f"no {best}: running stages 1 and 2 into {run} first", flush=True)
        for stage in (1, 2):
            train(config, run, ["--stage", str(stage)], [])
    return best


def start_stage3(config: Path, run: Path, work: Path, name: str, extra: list[str]) -> tuple:
    """Start a fresh stage 3 in work/<name> from run's stage-2 weights and cache; -> (process, out, start)."""
    out = work / name.split()[0]
    (out / "checkpoints" / "stage2").mkdir(parents=True, exist_ok=True)
    for suffix in (".pt", ".json"):
        src = run / "checkpoints" / "stage2" / f"best{suffix}"
        if src.is_file():
            shutil.copy2(src, out / "checkpoints" / "stage2" / src.name)
    cmd = _cmd(config, out, ["--stage", "3"], [f"data.cache_dir={run / 'cache'}", "eval.enabled=true", *extra])
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return proc, out, time.perf_counter()


def finish_stage3(proc: subprocess.Popen, out: Path, t0: float) -> dict:
    """Wait for a stage-3 run; -> its stage-end eval.json (+ its wall seconds)."""
    seconds = _wait(proc, t0)
    result = json.loads((out / "eval" / "stage3" / "eval.json").read_text())
    result["train_seconds"] = seconds
    return result


def _f(v, digits: int = 3) -> str:
    return "n/a" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def table(results: dict[str, dict]) -> str:
    """The side-by-side table: one column per variant (and the data's value for the music metrics)."""
    names = list(results)
    rows: list[tuple[str, str, list[str]]] = []

    def row(label: str, get, digits: int = 4, data: str = "") -> None:
        rows.append((label, data, [_f(get(results[n]), digits) for n in names]))

    row("negative ELBO (nats/token)", lambda r: r["validation"]["nll_per_token"])
    row("  recon (nats/token)", lambda r: r["validation"]["recon_per_token"])
    row("  KL (nats/token)", lambda r: r["validation"]["kl_per_token"])
    row("active latent units", lambda r: f"{r['validation']['latent']['active_units']}/"
                                         f"{r['validation']['latent']['latent_dim']}")
    row("z-swap gap (nats/token)", lambda r: r["validation"]["latent"]["zswap_gap"])
    row("D accuracy, real windows", lambda r: r["validation"]["discriminator"]["acc_real"], 2)
    row("D accuracy, generated", lambda r: r["validation"]["discriminator"]["acc_fake"], 2)
    row("valid MIDI share", lambda r: r["samples"]["valid_midi_share"], 2)
    row("grammar errors (share of tokens)", lambda r: r["samples"]["grammar_error_rate"])
    first = results[names[0]]
    for metric in first.get("metrics", {}):
        data = _f(first["metrics"][metric]["data"])
        row(f"{metric} (samples)", lambda r, m=metric: r["metrics"][m]["samples"], 3, data)
        row(f"{metric} (overlap with data)", lambda r, m=metric: r["metrics"][m]["overlap"], 2)
    row("training seconds", lambda r: r["train_seconds"], 0)
    width = max(len(r[0]) for r in rows) + 2
    head = f"{'':<{width}}{'data':>10}" + "".join(f"{n:>30}" for n in names)
    return "\n".join([head] + [f"{label:<{width}}{data:>10}" + "".join(f"{v:>30}" for v in vals)
                               for label, data, vals in rows])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, default=REPO / "outputs",
                   help="run folder whose checkpoints/stage2/best.pt and cache/ both variants start from "
                        "(stages 1-2 are trained into it when missing)")
    p.add_argument("--config", type=Path, default=QUICKSTART, help="pipeline config folder (default: quickstart)")
    p.add_argument("--steps", type=int, default=0, help="stage-3 optimizer steps of each variant (0 = the config's)")
    p.add_argument("--work", type=Path, default=None, help="folder for the two stage-3 runs (default: a temp dir, "
                                                            "removed at the end)")
    p.add_argument("--parallel", action="store_true",
                   help="run the two variants at the same time (same results; less wall time on a machine "
                        "with spare cores, or shared with other jobs); timings then are not comparable")
    a = p.parse_args(argv)
    if a.steps < 0:
        print(f"--steps must be >= 0 (0 = the config's), got {a.steps}", file=sys.stderr)
        return 2
    extra = [f"stage3.train.max_steps={a.steps}"] if a.steps else []
    ensure_stage2(a.run, a.config)
    tmp = None
    if a.work is None:
        tmp = tempfile.TemporaryDirectory(prefix="aurl_ablation_")
        a.work = Path(tmp.name)
    try:
        results, running = {}, {}
        for name, args in VARIANTS.items():
            print(f"stage 3, {name} ...", flush=True)
            running[name] = start_stage3(a.config, a.run, a.work, name, [*extra, *args])
            if not a.parallel:
                results[name] = finish_stage3(*running.pop(name))
        for name, started in running.items():  # --parallel: both were started, now both are waited for
            results[name] = finish_stage3(*started)
        cfg = results[next(iter(results))]["eval_config"]
        print(f"\nstage 3 of {a.config.name} from {a.run / 'checkpoints' / 'stage2' / 'best.pt'}"
              f"{f', {a.steps} steps' if a.steps else ''}; evaluation: {cfg['num_samples']} samples x "
              f"{cfg['length']} tokens at T {cfg['temperature']} (seed {cfg['seed']}), validation capped at "
              f"{cfg['max_val_tokens'] or 'all'} tokens")
        print(table(results))
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
