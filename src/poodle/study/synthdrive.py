"""The SynthDrive study: do PooDLe's claims (the paper's Tables 4 and 5) hold at CPU scale? (`poodle study synthdrive`)

One fixed dataset, one budget, many variants, several seeds:

1. data (once): a SynthDrive world in the BDD100K layout (`OUT/data/synthdrive`) and a fixed pool of frame pairs
   with exact flow prepared as shards (`OUT/data/shards`). Every pretraining run reads the same pairs.
2. jobs, one per (variant, seed): pretrain the variant's shipped config (`table4_row*`, `pooled_only`) at the
   study's CPU scale (`SCALE`: ResNet-18, 64x128 crops, 8 pairs/step) for the same number of steps; measure how
   well its dense features follow the flow (`poodle.evaluation.feature_alignment`); run the same linear readout
   (`readout_synthdrive_cpu`, seeded by the study seed) and write `OUT/runs/<variant>/seed<k>/job.json`.
   The "random" variant is the readout of a randomly initialised backbone (no pretraining).
3. report: mean +- std over seeds of All/Small/Large/Rare/Common mIoU and Acc, per-class IoU, the four claims
   tested with Welch's t-test, figures (`poodle.study.report`).

Jobs run in `jobs` worker processes (default 2, one thread each: on 2 cores two single-threaded small-conv jobs
get ~1.4x the throughput of one two-threaded job). A finished job is never rerun, an interrupted pretraining
resumes from its last checkpoint, so rerunning the same command continues an interrupted study.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from poodle.output_dir import MARKER, OutputDirError, check_replaceable, write_marker
from poodle.study.report import CLAIMS


class StudyError(RuntimeError):
    pass


@dataclass(frozen=True)
class Variant:
    key: str  # folder name under OUT/runs
    label: str  # row label in the tables
    config: str | None  # shipped pretraining config; None = randomly initialised backbone, no pretraining
    overrides: tuple[str, ...] = ()  # on top of the study scale
    paper: str = ""  # where the variant comes from in the paper
    # "poodle": the PooDLe method (Table 4/5 rows, FlowE as released), which gets POODLE_SCALE on top of
    # COMMON_SCALE; "baseline": another method at its own `*_synthdrive` recipe (optimiser, lr, heads, views), which
    # gets COMMON_SCALE only, and is read out on its encoder rebuilt dilated (stride 8), FlowE's protocol for
    # image-level methods, so that every row is read out at the same feature resolution.
    family: str = "poodle"

    @property
    def pretrained(self) -> bool:
        return self.config is not None


def _sweep(lo: float, hi: float) -> Variant:
    return Variant(
        f"subcrops_{lo:.2f}-{hi:.2f}",
        f"PooDLe, subcrops {lo:.2f}-{hi:.2f}",
        "table4_row7_poodle",
        (f"subcrops.area=[{lo},{hi}]", f"subcrops.target_area_max={hi}"),
        f"Table 5 row {lo:.2f}-{hi:.2f}",
    )


VARIANTS: dict[str, Variant] = {
    v.key: v
    for v in [
        Variant("random", "Random init", None, paper="Scratch baseline"),
        Variant("row1_flowe", "FlowE (row 1)", "table4_row1_flowe", paper="Table 4 row 1"),
        Variant(
            "row2_pool_no_decoder", "+ pooled, no SDM (row 2)", "table4_row2_pool_no_decoder", paper="Table 4 row 2"
        ),  # fmt: skip
        Variant(
            "row3_pool_top_down", "+ pooled, top-down only (row 3)", "table4_row3_pool_top_down", paper="Table 4 row 3"
        ),  # fmt: skip
        Variant(
            "row4_pool_lateral", "+ pooled, laterals only (row 4)", "table4_row4_pool_lateral", paper="Table 4 row 4"
        ),  # fmt: skip
        Variant("row5_sdm_no_pool", "+ SDM, no pooled (row 5)", "table4_row5_sdm_no_pool", paper="Table 4 row 5"),
        Variant("row7_poodle", "PooDLe (row 7)", "table4_row7_poodle", paper="Table 4 row 7"),
        Variant(
            "row7_release_clamp",
            "PooDLe, release subcrop clamp",
            "table4_row7_poodle",
            ("subcrops.clamp=release",),
            "Table 4 row 7, the release's subcrop clamping",
        ),  # fmt: skip
        Variant("pooled_only", "Pooled only", "pooled_only", paper="pooled-only baseline"),
        _sweep(0.04, 0.18),
        _sweep(0.18, 0.36),
        _sweep(0.54, 1.0),
        Variant("flowe_release", "FlowE (as released)", "flowe_synthdrive", paper="Tables 1-3 FlowE"),
        Variant("byol", "BYOL (frame pairs)", "byol_synthdrive", paper="Tables 1-3 BYOL", family="baseline"),
        Variant("dino", "DINO (ResNet)", "dino_r50_synthdrive", paper="Tables 1-3 DINO", family="baseline"),
        Variant("densecl", "DenseCL", "densecl_synthdrive", paper="Tables 1-3 DenseCL", family="baseline"),
        Variant("pixpro", "PixPro", "pixpro_synthdrive", paper="Tables 1-3 PixPro", family="baseline"),
    ]
}

# The study's CPU scale. COMMON_SCALE applies to every pretrained variant: the same backbone, the same pairs at the
# same resolution, the same batch. POODLE_SCALE adds, for the PooDLe-method rows, the demo's head sizes and lr (the
# shipped Table 4 configs are at BDD100K scale); subcrops.size=32 keeps a 2-30 % subcrop of a 64x128 crop near its
# native size (the paper's 192 px is ~native for 512x1024). The baselines' `*_synthdrive` configs are already at
# this scale with their own optimiser and lr (docs/methods.md). Everything else - losses, SDM, subcrop algorithm,
# augmentation, EMA, optimiser type - is the variant's own.
COMMON_SCALE: tuple[str, ...] = (
    "model.arch=resnet18",
    "data.dataset=shards",
    "data.resolution=[64,128]",
    "data.repeat=2",
    "data.workers=0",
    "optim.batch_size=8",
    "run.device=cpu",
    "run.log_every=10",
    "run.ckpt_every=20",
)
POODLE_SCALE: tuple[str, ...] = (
    "model.proj_hidden_dim=1024",
    "model.proj_out_dim=128",
    "subcrops.size=32",
    "optim.lr=1e-3",
)
SCALE: tuple[str, ...] = COMMON_SCALE + POODLE_SCALE  # what a PooDLe-method row gets


def variant_scale(variant: Variant) -> tuple[str, ...]:
    return SCALE if variant.family == "poodle" else COMMON_SCALE


@dataclass(frozen=True)
class StudyPlan:
    name: str
    variants: tuple[str, ...]
    seeds: int
    pretrain_steps: int
    readout_steps: int
    pairs: int  # distinct frame pairs prepared once and shared by every run
    train_videos: int
    train_images: int
    val_images: int
    world_seed: int = 0
    dt_frames: tuple[int, int] = (8, 15)  # frame gaps of the pair pool (inclusive); the paper's BDD100K: 15-30
    alignment_pairs: int = 16  # pairs of the shard pool used by the feature-alignment diagnostic
    figures: int = 2  # readout figures for seed 0
    overrides: tuple[str, ...] = ()  # extra `key=value` config overrides for every PooDLe-method variant
    # On top of `readout_synthdrive_cpu` for every variant (the same readout for all).
    readout_overrides: tuple[str, ...] = ()
    # Further readouts of every run, (name, overrides on `readout_synthdrive_cpu`), each into readout_<name>/ and
    # reported with its own tables and claim tests. Adding one to a finished study reads out its runs again without
    # pretraining (the plan check accepts appended readouts).
    extra_readouts: tuple[tuple[str, tuple[str, ...]], ...] = ()
    claims: tuple[str, ...] = ()  # pre-registered before the run (plan.json); each reported, never dropped

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The same readout for every variant: the linear head of `readout_synthdrive_cpu`, trained and scored on the labelled
# images upsampled 2x (256x512), so that a Small class covers 4x the stride-8 cells it has at the native 128x256
# (person 2.2 -> 8.8 cells, traffic light 0.9 -> 3.5: benchmarks/study_pilot.py), with median-frequency class
# weights, without which a 150-step head on 160 images never predicts a Small class (docs/study-synthdrive.md).
STUDY_READOUT: tuple[str, ...] = (
    "class_weight=median_frequency",
    "crop_size=[128,256]",
    "base_size=256",
    "eval_resize=256",
)
# A second readout of every run at the native 128x256, the resolution of the pretraining pairs (same weights): at
# 2x the random backbone scores as well as the pretrained ones (docs/study-synthdrive.md), a scale mismatch.
NATIVE_READOUT: tuple[tuple[str, tuple[str, ...]], ...] = (("native", ("class_weight=median_frequency",)),)

FULL = StudyPlan(
    name="full",
    variants=(
        "random",
        "row7_poodle",
        "row1_flowe",
        "row5_sdm_no_pool",
        "row2_pool_no_decoder",
        "subcrops_0.04-0.18",
        "subcrops_0.54-1.00",
        "row7_release_clamp",
        "flowe_release",
        "pooled_only",
        "byol",
        "dino",
        "densecl",
        "pixpro",
    ),  # fmt: skip
    claims=tuple(CLAIMS.values()),
    seeds=3,
    pretrain_steps=75,
    readout_steps=150,
    pairs=960,
    train_videos=16,
    train_images=160,
    val_images=64,
    readout_overrides=STUDY_READOUT,
    extra_readouts=NATIVE_READOUT,
)
QUICK = StudyPlan(
    name="quick",
    variants=("random", "row1_flowe", "row7_poodle", "pooled_only", "byol"),
    claims=tuple(CLAIMS.values()),
    seeds=2,
    pretrain_steps=12,
    readout_steps=40,
    pairs=96,
    train_videos=8,
    train_images=48,
    val_images=24,
    readout_overrides=STUDY_READOUT,
    extra_readouts=NATIVE_READOUT,
)
PLANS = {"full": FULL, "quick": QUICK}


@dataclass
class Job:
    variant: Variant
    seed: int
    folder: Path

    @property
    def name(self) -> str:
        return f"{self.variant.key}/seed{self.seed}"


def make_jobs(out: Path, plan: StudyPlan) -> list[Job]:
    """Seed-major order, so that a study stopped early has whole seeds of every variant."""
    for key in plan.variants:
        if key not in VARIANTS:
            raise StudyError(f"unknown variant {key!r}; choose from: {', '.join(VARIANTS)}")
    return [Job(VARIANTS[k], s, out / "runs" / k / f"seed{s}") for s in range(plan.seeds) for k in plan.variants]


def pretrain_config(variant: Variant, plan: StudyPlan, shards: Path, seed: int):
    """The variant's shipped config at the study scale, with a cosine horizon equal to the study's length."""
    from poodle.config import load_config

    if variant.config is None:
        raise StudyError(f"variant {variant.key} is not pretrained")
    # plan.overrides (--set on the command line) are PooDLe-method keys; baselines keep their own recipe.
    extra = plan.overrides if variant.family == "poodle" else ()
    base = [*variant_scale(variant), *variant.overrides, *extra, f"data.root={shards}", f"run.seed={seed}"]
    batch = load_config(variant.config, base).optim.batch_size
    # One "epoch" := the whole run (steps x batch pairs), so the cosine horizon and the stop are exactly
    # `pretrain_steps` with no float rounding, and warmup is its first 10 %.
    return load_config(variant.config, [*base, f"optim.epoch_pairs={plan.pretrain_steps * batch}",
                                        "optim.schedule_epochs=1", "optim.stop_epochs=1",
                                        "optim.warmup_epochs=0.1"])  # fmt: skip


# ----------------------------------------------------------------------------------------------------- data


def prepare_data(out: Path, plan: StudyPlan, workers: int = 2, progress: bool = True) -> tuple[Path, Path]:
    """The study's dataset and shared pair pool, built once (kept when they already match the plan)."""
    from poodle.config import load_config
    from poodle.data.shards import prepare_shards
    from poodle.data.synthdrive import generate_dataset

    data, shards = out / "data" / "synthdrive", out / "data" / "shards"
    counts = {"train_videos": plan.train_videos, "val_videos": 1, "train_images": plan.train_images,
              "val_images": plan.val_images, "flow_pairs": 0}  # fmt: skip
    meta_path = data / "meta.json"
    want = {"videos": {"train": plan.train_videos, "val": 1},
            "images": {"train": plan.train_images, "val": plan.val_images}}  # fmt: skip
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else None
    if meta is None or meta.get("seed") != plan.world_seed or any(meta["counts"][k] != v for k, v in want.items()):
        print(f"study data: generating SynthDrive ({plan.train_videos} train videos, {plan.train_images} train / "
              f"{plan.val_images} val labelled images) into {data}", flush=True)  # fmt: skip
        generate_dataset(data, preset="small", seed=plan.world_seed, overwrite=True, preview=True,
                         progress=progress, **counts)  # fmt: skip
    prep_path = shards / "prepare.json"
    prep = json.loads(prep_path.read_text()) if prep_path.is_file() else None
    dt = list(plan.dt_frames)
    prep_dt = ((prep or {}).get("config") or {}).get("data", {}).get("dt_frames")
    if prep is None or prep.get("requested_pairs") != plan.pairs or prep.get("root") != str(data) or prep_dt != dt:
        cfg = load_config("synthdrive", [f"data.root={data}", "flow.source=gt", "data.resolution=[64,128]",
                                         "data.repeat=2", f"data.dt_frames=[{dt[0]},{dt[1]}]",
                                         f"run.seed={plan.world_seed}"])  # fmt: skip
        print(f"study data: rendering {plan.pairs} frame pairs (dt {dt[0]}-{dt[1]} frames) with exact flow into "
              f"{shards}", flush=True)  # fmt: skip
        prepare_shards(cfg, shards, plan.pairs, workers=workers, progress=progress, overwrite=True)
    return data, shards


# ----------------------------------------------------------------------------------------------------- one job


def _last_metrics(run_dir: Path) -> dict[str, float]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    return json.loads(lines[-1]) if lines else {}


def _alignment(backbone, networks, shards: Path, pairs: int) -> dict[str, dict[str, float]]:
    """Flow alignment of the readout features and, for variants with a dense loss, of the dense head."""
    import torch

    from poodle.evaluation.feature_alignment import (
        backbone_feature_fn,
        dense_head_alignment,
        feature_alignment,
        shard_pairs,
    )

    batch = shard_pairs(shards, pairs)
    inputs = (batch["frame_a"], batch["frame_b"], batch["flow_ab"], batch["flow_ba"])
    fn, _ = backbone_feature_fn(backbone)
    with torch.no_grad():
        out = {"features": feature_alignment(fn, *inputs).to_dict()}
    if networks is not None and getattr(networks, "dense_projector", None) is not None:
        out["dense_head"] = dense_head_alignment(networks, *inputs).to_dict()
    return out


def run_job(job: Job, plan: StudyPlan, data: Path, shards: Path, threads: int = 1) -> dict[str, Any]:
    """Pretrain (unless random), diagnose, read out, then the plan's further readouts; returns and writes job.json.
    A finished job returns at once, or runs only the further readouts it lacks."""
    import torch

    done = job.folder / "job.json"
    record = json.loads(done.read_text()) if done.is_file() else None
    missing = [(n, o) for n, o in plan.extra_readouts if n not in (record or {}).get("extra_readouts", {})]
    if record is not None and not missing:
        return record
    torch.set_num_threads(threads)
    job.folder.mkdir(parents=True, exist_ok=True)
    with open(job.folder / "job.log", "a") as logf, contextlib.redirect_stdout(logf), contextlib.redirect_stderr(logf):
        if record is None:
            record = _pretrain_and_read_out(job, plan, data, shards)
            _write_record(done, record)
        extras = record.setdefault("extra_readouts", {})
        for name, overrides in missing:  # each saved as soon as it is done
            results, seconds = _read_out(job, plan, data, overrides, f"readout_{name}", figures=0)
            extras[name] = {**_scores(results), "overrides": list(overrides), "seconds": seconds}
            _write_record(done, record)
    return record


def _backbone_spec(job: Job) -> tuple[str, str | None]:
    """(weights, arch) of a job's backbone for `load_backbone`/`run_readout`: its pretraining folder, or random."""
    return (str(job.folder / "pretrain"), None) if job.variant.pretrained else ("random", "resnet18")


def _read_out(job: Job, plan: StudyPlan, data: Path, overrides, folder: str, figures: int) -> tuple[dict, float]:
    """One linear readout of the job's backbone (`readout_synthdrive_cpu` + overrides, seeded by the job's seed)."""
    from poodle.evaluation.config import load_readout_config
    from poodle.evaluation.readout import run_readout

    weights, arch = _backbone_spec(job)
    rcfg = load_readout_config("readout_synthdrive_cpu", [*overrides, f"seed={job.seed}", "workers=0",
                                                          f"figures={figures}"])  # fmt: skip
    t0 = time.perf_counter()
    method = {"name": job.variant.label, "pretrain": "SynthDrive study"}
    results = run_readout(weights, "synthdrive", data, rcfg, job.folder / folder, steps=plan.readout_steps, arch=arch,
                          progress=False, method=method)  # fmt: skip
    return results, round(time.perf_counter() - t0, 1)


def _scores(results: dict[str, Any]) -> dict[str, Any]:
    return {"metrics": {k: results["metrics"][k] for k in ("miou", "aacc", "per_class_iou")},
            "group_metrics": results["group_metrics"]}  # fmt: skip


def _pretrain_and_read_out(job: Job, plan: StudyPlan, data: Path, shards: Path) -> dict[str, Any]:
    import torch

    from poodle.engine.pair_sources import build_pair_source
    from poodle.engine.train import pretrain
    from poodle.evaluation.backbones import load_backbone

    t0 = time.perf_counter()
    record: dict[str, Any] = {"variant": job.variant.key, "label": job.variant.label, "seed": job.seed,
                              "paper": job.variant.paper, "plan": plan.name}  # fmt: skip
    networks = None
    if job.variant.pretrained:
        cfg = pretrain_config(job.variant, plan, shards, job.seed)
        run_dir = job.folder / "pretrain"
        source, flow = build_pair_source(cfg)
        result = pretrain(cfg, run_dir, source, flow, resume=True)
        if result.get("interrupted") is not None:  # saved, but unfinished: never read out or recorded as done
            raise StudyError(f"{job.variant.key}/seed{job.seed}: pretraining interrupted at step "
                             f"{result['step']}; its checkpoint is kept, rerun the study to continue")  # fmt: skip
        networks = result["networks"]
        record["pretrain"] = {k: v for k, v in _last_metrics(run_dir).items() if isinstance(v, (int, float))}
        record["pretrain_seconds"] = round(time.perf_counter() - t0, 1)
    weights, arch = _backbone_spec(job)
    torch.manual_seed(job.seed)  # the random backbone: same init here as in the readout below
    dilated = None if job.variant.pretrained and job.variant.family == "poodle" else True
    alignment = _alignment(load_backbone(weights, arch=arch, dilated=dilated), networks, shards, plan.alignment_pairs)
    record["alignment"] = alignment["features"]
    if "dense_head" in alignment:
        record["alignment_dense_head"] = alignment["dense_head"]
    results, record["readout_seconds"] = _read_out(job, plan, data, plan.readout_overrides, "readout",
                                                   figures=plan.figures if job.seed == 0 else 0)  # fmt: skip
    record.update(_scores(results))
    record["classes"] = results["classes"]
    record["groups"] = results["groups"]
    record["features"] = results["method"].get("features")
    record["seconds"] = round(time.perf_counter() - t0, 1)
    return record


def _write_record(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)


def _exit_with_parent(parent_pid: int) -> None:
    """Worker initializer: exit when the study process is gone (killed by SIGTERM/SIGKILL, which skip the pool's
    cleanup), instead of training on as an orphan that steals the cores of the next study. The job's last
    checkpoint is kept, so the next run resumes it."""
    import threading

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


# ----------------------------------------------------------------------------------------------------- study


# A study folder's top level (an unmarked one of exactly these, from an older poodle, may be replaced).
_LAYOUT = ("plan.json", "summary.json", "summary.json.tmp", "report.md", "runs", "data", "figures", MARKER)


def _plan_defaults() -> dict[str, Any]:
    import dataclasses

    return json.loads(json.dumps({f.name: f.default for f in dataclasses.fields(StudyPlan)
                                  if f.default is not dataclasses.MISSING}))  # fmt: skip


def _only_readouts_added(old: Any, new: dict[str, Any]) -> bool:
    """True when `new` is `old` with further extra readouts appended (everything else, and the old ones, equal)."""
    if not isinstance(old, dict):
        return False
    before, after = old.get("extra_readouts", []), new.get("extra_readouts", [])
    rest_old = {k: v for k, v in old.items() if k != "extra_readouts"}
    rest_new = {k: v for k, v in new.items() if k != "extra_readouts"}
    return rest_old == rest_new and len(after) > len(before) and after[: len(before)] == before


def _check_plan(out: Path, plan: StudyPlan, overwrite: bool) -> None:
    """Continue the study in `out` (same plan), start one in an empty folder, or with --overwrite replace a study
    poodle made (its marker); never delete anything else."""
    import shutil

    plan_path = out / "plan.json"
    if plan_path.is_file():
        try:
            old = json.loads(plan_path.read_text())
        except ValueError:
            old = None
        if isinstance(old, dict):  # a plan from an older poodle lacks newer fields; their defaults are its behaviour
            old = {**_plan_defaults(), **old}
        new = json.loads(json.dumps(plan.to_dict()))  # tuples compare as the lists JSON stores
        if old == new:
            return
        if _only_readouts_added(old, new):
            added = [n for n, _ in new["extra_readouts"][len(old.get("extra_readouts", [])) :]]
            print(f"study plan: adding readout(s) {added} to the finished runs (no pretraining is redone)", flush=True)
            plan_path.write_text(json.dumps(plan.to_dict(), indent=1) + "\n")
            return
        if not overwrite:
            name = old.get("name") if isinstance(old, dict) else "unreadable"
            raise StudyError(f"{out} holds a study with another plan ({name}: {plan_path}); use another --out or "
                             "pass --overwrite to start over")  # fmt: skip
    try:
        if check_replaceable(out, "study", overwrite, legacy=("plan.json", _LAYOUT)):
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        write_marker(out, "study")
    except OutputDirError as e:
        raise StudyError(str(e)) from None
    plan_path.write_text(json.dumps(plan.to_dict(), indent=1) + "\n")


def run_study(out: str | Path, plan: StudyPlan, jobs: int = 2, overwrite: bool = False,
              progress: bool = True) -> dict[str, Any]:  # fmt: skip
    """Run (or continue) a study into `out`; returns the summary (also OUT/summary.json, OUT/report.md)."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from multiprocessing import get_context

    from poodle.study.report import write_report

    out = Path(out).expanduser().absolute()
    if jobs < 1:
        raise StudyError(f"jobs must be >= 1, got {jobs}")
    _check_plan(out, plan, overwrite)
    t0 = time.perf_counter()
    data, shards = prepare_data(out, plan, workers=max(1, min(2, os.cpu_count() or 1)), progress=progress)
    print(f"study data ready at {time.perf_counter() - t0:.0f} s", flush=True)
    todo = make_jobs(out, plan)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    n = len(todo)
    print(f"{n} jobs ({len(plan.variants)} variants x {plan.seeds} seeds): {plan.pretrain_steps} pretraining steps "
          f"+ {plan.readout_steps} readout steps each; {jobs} at a time, {threads} thread(s) each; logs in "
          f"{out / 'runs'}/<variant>/seed<k>/job.log", flush=True)  # fmt: skip
    finished = 0

    def report(job: Job, rec: dict[str, Any]) -> None:
        nonlocal finished
        finished += 1
        gm = rec["group_metrics"]["mIoU"]
        print(f"[{finished}/{n}] {job.name:<28} mIoU {100 * gm['All']:5.1f} (Small {100 * gm['Small']:4.1f}, Large "
              f"{100 * gm['Large']:4.1f}) in {rec['seconds']:.0f} s; study at {time.perf_counter() - t0:.0f} s",
              flush=True)  # fmt: skip

    if jobs == 1:
        for job in todo:
            report(job, run_job(job, plan, data, shards, threads))
    else:
        with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), initializer=_exit_with_parent,
                                 initargs=(os.getpid(),)) as pool:  # fmt: skip
            pending = {pool.submit(run_job, job, plan, data, shards, threads): job for job in todo}
            while pending:
                finished_now, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished_now:
                    job = pending.pop(fut)
                    try:
                        rec = fut.result()
                    except Exception as e:
                        for f in pending:
                            f.cancel()
                        raise StudyError(f"job {job.name} failed: {e} (see {job.folder / 'job.log'})") from e
                    report(job, rec)
    summary = write_report(out, plan, wall_seconds=time.perf_counter() - t0)
    return summary


def plan_for(
    quick: bool,
    seeds: int | None = None,
    variants: list[str] | None = None,
    pretrain_steps: int | None = None,
    readout_steps: int | None = None,
    overrides: list[str] | None = None,
    dt_frames: tuple[int, int] | None = None,
) -> StudyPlan:
    """FULL or QUICK with optional changes (stored in OUT/plan.json: a folder holding another plan is refused)."""
    plan = QUICK if quick else FULL
    for name, value in (("pretrain steps", pretrain_steps), ("readout steps", readout_steps)):
        if value is not None and value < 1:
            raise StudyError(f"{name} must be >= 1, got {value}")
    if pretrain_steps is not None:
        plan = replace(plan, pretrain_steps=pretrain_steps)
    if dt_frames is not None:
        lo, hi = dt_frames
        if not 1 <= lo <= hi:
            raise StudyError(f"--dt must be two frame gaps 1 <= A <= B, got {lo},{hi}")
        plan = replace(plan, dt_frames=(int(lo), int(hi)))
    if readout_steps is not None:
        plan = replace(plan, readout_steps=readout_steps)
    if overrides:
        from poodle.config import load_config

        load_config("poodle_ablation", list(overrides))  # a wrong key fails here, naming the valid ones
        plan = replace(plan, overrides=tuple(overrides))
    if seeds is not None:
        if seeds < 1:
            raise StudyError(f"seeds must be >= 1, got {seeds}")
        plan = replace(plan, seeds=seeds)
    if variants:
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown:
            raise StudyError(f"unknown variant(s) {unknown}; choose from: {', '.join(VARIANTS)}")
        plan = replace(plan, variants=tuple(variants))
    return plan


__all__ = ["FULL", "PLANS", "QUICK", "SCALE", "VARIANTS", "Job", "StudyError", "StudyPlan", "Variant",
           "make_jobs", "plan_for", "prepare_data", "pretrain_config", "run_job", "run_study"]  # fmt: skip
