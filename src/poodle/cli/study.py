"""`poodle study synthdrive --out DIR [--quick] [--jobs N] [--seeds N] [--variants a,b,...] [key=value ...]`.

Pretrains the paper's Table 4 variants (rows 1, 2, 5, 7), PooDLe with the release's subcrop clamp, a subcrop-area
sweep (Table 5), pooled-only and the baselines (FlowE as released, BYOL, DINO, DenseCL, PixPro) on one fixed
SynthDrive dataset and budget, several seeds each, plus a randomly initialised backbone; runs the same linear
readout for every run; writes DIR/report.md (mean ± std tables, the pre-registered claims tested with Welch's
t-test, subcrop hits, diagnostics, per-class IoU), DIR/summary.json and DIR/figures. See docs/study-synthdrive.md
for the time the full study takes on 2 cores; `--quick` (5 variants, 2 seeds, a dozen steps) is under 10 minutes.
Rerunning the same command continues an interrupted study: finished runs are kept, an interrupted pretraining
resumes from its checkpoint.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from poodle.cli import UserError

STUDIES = ("synthdrive",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", choices=STUDIES, help="which study (synthdrive: the paper's Tables 4 and 5 at CPU scale)")
    p.add_argument("--out", required=True, metavar="DIR", help="study folder (data, runs, report)")
    p.add_argument("--quick", action="store_true", help="under 10 minutes: 5 variants x 2 seeds, a dozen steps each")
    p.add_argument("--jobs", type=int, default=2, metavar="N", help="runs at a time (default 2, one per core)")
    p.add_argument("--seeds", type=int, metavar="N", help="seeds per variant (default: 3 full, 2 quick)")
    p.add_argument("--variants", metavar="A,B", help="comma-separated variant keys (default: the plan's; "
                   "see --list)")  # fmt: skip
    p.add_argument("--steps", type=int, metavar="N", help="pretraining steps per run (default: the plan's)")
    p.add_argument("--readout-steps", type=int, metavar="N", help="readout steps per run (default: the plan's)")
    p.add_argument("--dt", metavar="A,B", help="frame gaps of the pair pool, inclusive (default 8,15; the paper's "
                   "BDD100K regime: 15,30)")  # fmt: skip
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="config overrides for every pretrained variant (e.g. objective.ema_momentum=0.9)",
    )
    p.add_argument("--list", action="store_true", help="list the variants and the plans, then exit")
    p.add_argument("--overwrite", action="store_true", help="delete DIR's previous study (another plan) first")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from the finished runs only")


def run(args: argparse.Namespace) -> int:
    from poodle.study.report import write_report
    from poodle.study.synthdrive import (
        COMMON_SCALE,
        PLANS,
        POODLE_SCALE,
        VARIANTS,
        StudyError,
        plan_for,
        run_study,
    )

    if args.list:
        print("variants (key: label [where in the paper] config + overrides):")
        for v in VARIANTS.values():
            cfg = f"{v.config} {' '.join(v.overrides)}".strip() if v.config else "no pretraining"
            print(f"  {v.key:<22} {v.label} [{v.paper}]: {cfg}")
        print(f"study scale (on top of each config): {' '.join(COMMON_SCALE)}; PooDLe-method rows also "
              f"{' '.join(POODLE_SCALE)}")  # fmt: skip
        for p in PLANS.values():
            print(f"plan {p.name}: {', '.join(p.variants)} x {p.seeds} seeds, {p.pretrain_steps} pretraining + "
                  f"{p.readout_steps} readout steps ({' '.join(p.readout_overrides)}), {p.pairs} pairs")  # fmt: skip
        return 0
    variants = [s.strip() for s in args.variants.split(",") if s.strip()] if args.variants else None
    t0 = time.perf_counter()
    try:
        dt = None
        if args.dt:
            try:
                dt = tuple(int(x) for x in args.dt.split(","))
            except ValueError:
                dt = ()
            if len(dt) != 2:
                raise StudyError(f"--dt takes two frame gaps A,B (e.g. 15,30), got {args.dt!r}")
        plan = plan_for(args.quick, args.seeds, variants, args.steps, args.readout_steps, args.overrides, dt)
        if args.report_only:
            write_report(Path(args.out), plan)
        else:
            run_study(args.out, plan, jobs=args.jobs, overwrite=args.overwrite)
    except (StudyError, ValueError) as e:
        raise UserError(str(e)) from e
    out = Path(args.out)
    print(f"\n{(out / 'report.md').read_text()}")
    print(f"study done in {(time.perf_counter() - t0) / 60:.1f} min: {out / 'report.md'}, {out / 'summary.json'}, "
          f"figures in {out / 'figures'}")  # fmt: skip
    return 0
