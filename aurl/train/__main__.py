"""`python -m aurl.train` / `accelerate launch -m aurl.train`: run the three-stage pipeline (see
aurl.train.pipeline for the config layout). No --config = the CPU quickstart on the bundled Bach chorales."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from aurl.config import TRACKERS
from aurl.console import ArgParser, UserError
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
    report = out_dir / "report.html"  # aurl.evaluate.report: rewritten after each stage-end evaluation
    print(f"  report: {report}" if report.is_file()
          else f"  report: none yet (python -m aurl.evaluate --report --run-dir {out_dir})")
    from aurl.slurm import status_lines  # the stage jobs slurm/pipeline.sh recorded, if any

    for line in status_lines(out_dir):
        print(f"  {line}")
    return 0


def clear(out_dir: Path, force: bool, yes: bool) -> int:
    if st.is_live(out_dir) and not force:
        raise UserError(f"a live run holds {out_dir} ({st.holder(out_dir)}); stop it first or pass --force")
    targets = [p for p in (out_dir / st.STATE_FILE, out_dir / (st.STATE_FILE + ".bak"), out_dir / "checkpoints",
                           out_dir / "logs", out_dir / st.LOCK_FILE) if p.exists()]
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


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out_dir = Path(args.output_dir)
    try:
        if args.status:
            return status(out_dir)
        if args.clear:
            return clear(out_dir, args.force, args.yes)
        from aurl.train.pipeline import STAGES, load_pipeline, run_pipeline

        cfgs = load_pipeline(args.config, args.overrides)  # every stage checked before any work
        if args.plan:
            from aurl.train.plan import plan

            chosen = {args.stage: cfgs[args.stage]} if args.stage else cfgs
            print("\n".join(plan(chosen, out_dir, args.gpus, args.gpu_mem)))
            return 0
        if args.resume and st.read_state(out_dir) is None:
            raise UserError(f"--resume: no run to resume in {out_dir}")
        stages = (args.stage,) if args.stage else STAGES
        t0 = time.time()
        code = run_pipeline(cfgs, out_dir, stages, args.tracker, args.data, args.from_scratch)
        if code == 0:
            print(f"pipeline finished in {time.time() - t0:.0f} s") if _rank0() else None
        return code
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _rank0() -> bool:
    from aurl.console import is_main_process

    return is_main_process()


if __name__ == "__main__":
    sys.exit(main())
