"""`python -m aurl.train` / `accelerate launch -m aurl.train`: run the three-stage pipeline (see
aurl.train.pipeline for the config layout). No --config = the CPU quickstart on the bundled Bach chorales."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from aurl.config import TRACKERS
from aurl.console import (
    USER_ERROR_EXIT,
    ArgParser,
    UserError,
    check_writable_folder,
    is_main_process,
    one_line,
)
from aurl.rundir import RunDir
from aurl.train import state as st


def parse_args(argv):
    p = ArgParser(prog="python -m aurl.train", description=__doc__)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides: section.key=value (all stages) or stageN.section.key=value")
    p.add_argument("--config", help="folder of stage YAMLs (stage1*.yaml..stage3*.yaml) or a '{stage}' pattern "
                                    "(default: configs/training_configs/quickstart)")
    p.add_argument("--output-dir", default="outputs", help="run folder (default: outputs)")
    p.add_argument("--data", help="MIDI folder (default: the bundled Bach chorales)")
    p.add_argument("--stage", type=int, choices=(1, 2, 3), help="run this stage only")
    p.add_argument("--from-scratch", action="store_true",
                   help="with --stage N>1: start from fresh weights when stage N-1's best model is missing")
    p.add_argument("--resume", action="store_true", help="require an existing run to resume (resume is automatic)")
    p.add_argument("--tracker", choices=TRACKERS, help="overrides logging.tracker")
    p.add_argument("--status", action="store_true", help="print the run's progress and exit (read-only)")
    p.add_argument("--plan", action="store_true", help="print each stage's memory per GPU, steps and ETA; no training")
    p.add_argument("--gpus", type=int, default=1, help="with --plan: GPUs in all, over all nodes (default 1)")
    p.add_argument("--gpu-mem", type=float, default=80.0, help="with --plan: GiB per GPU (default 80)")
    p.add_argument("--clear", action="store_true", help="delete this output dir's state, checkpoints and logs")
    p.add_argument("--force", action="store_true", help="with --clear: even while a run holds the lock")
    p.add_argument("--yes", action="store_true", help="with --clear: do not ask")
    return p.parse_intermixed_args(argv)  # overrides may come before, between or after the flags


def status(out_dir: Path) -> int:
    state = st.read_state(out_dir)
    if state is None:
        print(f"no run in {out_dir}")
        return 0
    live = st.is_live(out_dir)
    print(f"run {state['run_id']} in {out_dir}: {'LIVE (' + st.holder(out_dir) + ')' if live else 'not running'}; "
          f"current stage {state['current_stage']}; last update {state['updated_at']}")
    for name in sorted(state["stages"]):
        e = state["stages"][name]
        best = e.get("best_val_loss")
        eta = e.get("eta_s")
        tps = e.get("tokens_per_s")
        print(f"  stage {name}: {e['status']}, epoch {e['epoch']}, step {e['step']}/{e.get('total_steps')}, "
              f"batch {e['batch']}, best val {'-' if best is None else f'{best:.4f}'}"
              f", {'-' if tps is None else f'{tps:,.0f}'} tok/s, ETA {'-' if eta is None else f'{eta:.0f} s'}")
        print(f"    best: {e.get('best_checkpoint')}\n    last: {e.get('last_checkpoint')}")
    from aurl.evaluate.status import latest_eval  # the newest stage-end or evaluate-command report

    ev = latest_eval(out_dir)
    if ev is not None:
        nll = ev["nll_per_token"]
        bar = ev["quality_bar"]
        print(f"  latest evaluation: {ev['json']} (val NLL/token {'-' if nll is None else f'{nll:.4f}'}"
              + (f"; quality bar {sum(bar.values())}/{len(bar)} met" if bar else "") + ")")
        for picture in ev["pictures"]:
            print(f"    {picture}")
    report = RunDir(out_dir).report  # aurl.evaluate.report: rewritten after each stage-end evaluation
    print(f"  report: {report}" if report.is_file()
          else f"  report: none yet (python -m aurl.evaluate --report --run-dir {out_dir})")
    from aurl.slurm import status_lines  # the stage jobs slurm/pipeline.sh recorded, if any

    for line in status_lines(out_dir):
        print(f"  {line}")
    return 0


def clear(out_dir: Path, force: bool, yes: bool) -> int:
    if st.is_live(out_dir) and not force:
        raise UserError(f"a live run holds {out_dir} ({st.holder(out_dir)}); stop it first or pass --force")
    targets = [p for p in RunDir(out_dir).cleared() if p.exists()]
    if not targets:
        print(f"nothing to clear in {out_dir}")
        return 0
    if not yes:
        answer = input(f"delete {', '.join(str(t) for t in targets)}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing deleted")
            return 1
    for t in targets:
        shutil.rmtree(t) if t.is_dir() else t.unlink()
    print(f"cleared {out_dir}")
    return 0


def check_paths(out_dir: Path, data: str | None) -> None:
    """The folders named on the command line, checked before anything is created."""
    check_writable_folder("--output-dir", out_dir)
    if data is not None and not Path(data).is_dir():
        raise UserError(f"--data {data}: no such folder")


def listing(out_dir: Path) -> dict[str, tuple[bool, int, int]] | None:
    """{relative path: (is a folder, size, mtime_ns)} of everything under out_dir; None when it does not exist."""
    if not out_dir.is_dir():
        return None
    found = {}
    for root, dirs, files in os.walk(out_dir):
        for name in dirs + files:
            p = Path(root) / name
            try:
                info = p.lstat()
            except FileNotFoundError:
                continue
            found[str(p.relative_to(out_dir))] = (name in dirs, info.st_size, info.st_mtime_ns)
    return found


def remove_what_appeared(out_dir: Path, before: dict[str, tuple[bool, int, int]] | None) -> None:
    """After a user error: leave the output dir as it was found (the lock, a half-built cache, empty log
    folders, the folder itself). Only when the failed start changed no file that was there before (the lock
    aside) and recorded no progress: new files that go with a changed one (a cache manifest updated with new
    shards, a state file) are real work, and removing them alone would break what stays."""
    after, was = listing(out_dir), before or {}
    if after is None or st.STATE_FILE in set(after) - set(was):
        return
    if any(after.get(rel) != entry for rel, entry in was.items() if not entry[0] and rel != st.LOCK_FILE):
        return
    if st.is_live(out_dir):  # another run holds the folder (our lock is released by now): not ours to touch
        return
    for rel in sorted(set(after) - set(was), key=lambda r: r.count(os.sep), reverse=True):
        p = out_dir / rel
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
    if before is None and not any(out_dir.iterdir()):
        out_dir.rmdir()


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out_dir = Path(args.output_dir)
    before = listing(out_dir)
    try:
        check_paths(out_dir, args.data)
        if args.status:
            return status(out_dir)
        if args.clear:
            return clear(out_dir, args.force, args.yes)
        from aurl.train.pipeline import STAGES, load_pipeline, run_pipeline

        cfgs = load_pipeline(args.config, args.overrides, args.data, args.tracker)  # all checked before any work
        if args.plan:
            from aurl.train.plan import plan

            chosen = {args.stage: cfgs[args.stage]} if args.stage else cfgs
            print("\n".join(plan(chosen, out_dir, args.gpus, args.gpu_mem)))
            return 0
        if args.resume and st.read_state(out_dir) is None:
            raise UserError(f"--resume: no run to resume in {out_dir}")
        stages = (args.stage,) if args.stage else STAGES
        t0 = time.time()
        code = run_pipeline(cfgs, out_dir, stages, args.from_scratch)
        if code == 0:
            print(f"pipeline finished in {time.time() - t0:.0f} s") if is_main_process() else None
        return code
    except UserError as e:
        if is_main_process():  # one rank tidies up; the others stop with the same error
            remove_what_appeared(out_dir, before)
        # "error: ..." without the [aurl] prefix the other commands use: launch scripts and tests match it
        print(f"error: {one_line(str(e))}", file=sys.stderr, flush=True)
        return USER_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
