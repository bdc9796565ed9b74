"""The SynthDrive study: statistics, claims, plans/configs, and a tiny end-to-end study (process pool, resume,
report)."""

import json
import math
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from poodle.cli import main
from poodle.engine.train import Schedule
from poodle.study.report import (
    CLAIMS,
    betainc,
    claim_summary,
    claims,
    detectable_difference,
    t_critical,
    t_two_sided_p,
    verdict,
    welch,
)
from poodle.study.synthdrive import (
    FULL,
    NATIVE_READOUT,
    QUICK,
    SCALE,
    VARIANTS,
    StudyError,
    StudyPlan,
    _check_plan,
    make_jobs,
    plan_for,
    pretrain_config,
    run_study,
)

# ------------------------------------------------------------------------------------------------ statistics


def test_t_distribution_matches_tables():
    # Two-sided 5 % critical values of Student's t: df=1 12.706, df=4 2.776, df=30 2.042, normal 1.960.
    for t, df in ((12.7062, 1), (2.776445, 4), (2.042272, 30), (1.959964, 1e7)):
        assert t_two_sided_p(t, df) == pytest.approx(0.05, abs=2e-5)
    assert t_two_sided_p(0.0, 3) == pytest.approx(1.0)
    assert t_two_sided_p(math.inf, 3) == 0.0
    # I_x(1, 1) = x and I_x(a, b) = 1 - I_{1-x}(b, a)
    assert betainc(1.0, 1.0, 0.3) == pytest.approx(0.3)
    assert betainc(2.5, 0.5, 0.7) == pytest.approx(1.0 - betainc(0.5, 2.5, 0.3))
    # Critical values back, and the difference 3 seeds resolve: t(4) * std * sqrt(2/3).
    assert t_critical(4) == pytest.approx(2.776445, abs=1e-5) and t_critical(1) == pytest.approx(12.7062, abs=1e-3)
    assert detectable_difference(0.01, 3) == pytest.approx(2.776445 * 0.01 * math.sqrt(2 / 3), rel=1e-5)
    assert math.isnan(detectable_difference(0.01, 1))


def test_welch_by_hand():
    a, b = [1.0, 2.0, 3.0], [4.0, 5.0, 6.5]
    r = welch(a, b)
    va, vb = 1.0 / 3, (1.0 + 0.0 + 2.25 - 3 * (0.5**2) + 0.0) / 2 / 3  # sample variances / n
    vb = sum((x - 31 / 6) ** 2 for x in b) / 2 / 3
    assert r["diff"] == pytest.approx(2.0 - 31 / 6)
    assert r["t"] == pytest.approx(r["diff"] / math.sqrt(va + vb))
    assert r["df"] == pytest.approx((va + vb) ** 2 / (va**2 / 2 + vb**2 / 2))
    assert 0.02 < r["p"] < 0.04
    assert verdict(r) == "contradicted" and verdict(r, sign=-1) == "holds"
    assert verdict(welch([1.0, 2.0, 3.0], [1.5, 2.5, 2.0])) == "not resolved"
    assert math.isnan(welch([1.0], [2.0, 3.0])["p"])
    assert verdict(welch([1.0], [2.0, 3.0])).startswith("not resolved")


def _record(variant: str, seed: int, all_: float, small: float, large: float) -> dict:
    gm = {"All": all_, "Small": small, "Large": large, "Rare": small, "Common": large}
    return {"variant": variant, "label": variant, "paper": "", "seed": seed, "group_metrics": {"mIoU": gm, "Acc": gm},
            "metrics": {"per_class_iou": [all_]}, "classes": ["x"]}  # fmt: skip


def test_claims_verdicts_follow_the_data():
    noise = [0.0, 0.004, -0.004]
    v = {
        "random": [_record("random", s, 0.15 + e, 0.01 + e, 0.20 + e) for s, e in enumerate(noise)],
        "row1_flowe": [_record("row1_flowe", s, 0.20 + e, 0.05 + e, 0.30 + e) for s, e in enumerate(noise)],
        "row5_sdm_no_pool": [_record("row5", s, 0.22 + e, 0.07, 0.31) for s, e in enumerate(noise)],
        "row7_poodle": [_record("row7", s, 0.26 + e, 0.12 + e, 0.33 + e) for s, e in enumerate(noise)],
        "byol": [_record("byol", s, 0.18 + e, 0.03 + e, 0.30) for s, e in enumerate(noise)],
        "densecl": [_record("densecl", s, 0.26 - e, 0.12 - e, 0.30) for s, e in enumerate(noise)],  # a tie
        "subcrops_0.04-0.18": [_record("s", s, 0.27 + e, 0.14 + e, 0.33) for s, e in enumerate(noise)],
        "subcrops_0.54-1.00": [_record("l", s, 0.24 + e, 0.09 + e, 0.33) for s, e in enumerate(noise)],
    }
    by_claim = {c["claim"]: c for c in claims(v)}
    assert list(by_claim) == list(CLAIMS)  # every pre-registered claim is reported, in order
    assert claim_summary(by_claim["scale"]) == "holds"
    assert by_claim["poodle_vs_flowe"]["verdict"] == {"row7_poodle_vs_row1_flowe_all": "holds",
                                                      "row7_poodle_vs_row1_flowe_small": "holds"}  # fmt: skip
    assert any("flowe_release" in r for r in by_claim["poodle_vs_flowe"]["reading"])  # named as not run
    base = by_claim["poodle_vs_baselines"]["verdict"]
    assert base["row7_poodle_vs_byol_all"] == "holds" and base["row7_poodle_vs_densecl_all"] == "not resolved"
    assert claim_summary(by_claim["poodle_vs_baselines"]) == "partly holds"
    assert by_claim["ablation_order"]["best"] == "row7_poodle"
    assert claim_summary(by_claim["ablation_order"]) == "holds"
    assert by_claim["subcrop_size"]["verdict"]["subcrops_0.04-0.18_vs_subcrops_0.54-1.00_small"] == "holds"
    # Swap PooDLe and FlowE: the claim is contradicted, not silently "holds".
    v["row7_poodle"], v["row1_flowe"] = v["row1_flowe"], v["row7_poodle"]
    assert claim_summary({c["claim"]: c for c in claims(v)}["poodle_vs_flowe"]) == "contradicted"
    # A claim none of whose variants ran is still reported.
    only = {"random": v["random"]}
    assert all(claim_summary(c) == "not run" for c in claims(only))


# ------------------------------------------------------------------------------------------------ plans


def test_plans_cover_the_issue():
    for key in ("random", "row1_flowe", "row2_pool_no_decoder", "row5_sdm_no_pool", "row7_poodle", "pooled_only",
                "row7_release_clamp", "flowe_release", "byol", "dino", "densecl", "pixpro"):  # fmt: skip
        assert key in FULL.variants
    assert FULL.seeds >= 3
    for plan in (FULL, QUICK):  # pre-registered: the claims are in the plan (plan.json) before any run
        assert plan.claims == tuple(CLAIMS.values())
        assert "class_weight=median_frequency" in plan.readout_overrides
    assert sum(k.startswith("subcrops_") for k in FULL.variants) >= 2
    jobs = make_jobs(tmp := Path("/nonexistent"), QUICK)
    assert [j.seed for j in jobs[: len(QUICK.variants)]] == [0] * len(QUICK.variants)  # seed-major
    assert jobs[0].folder == tmp / "runs" / QUICK.variants[0] / "seed0"
    with pytest.raises(StudyError, match="unknown variant"):
        plan_for(False, variants=["row9"])
    with pytest.raises(StudyError, match="seeds"):
        plan_for(True, seeds=0)
    assert plan_for(True, seeds=3, pretrain_steps=5).pretrain_steps == 5
    assert FULL.dt_frames == (8, 15) and plan_for(False, dt_frames=(15, 30)).dt_frames == (15, 30)
    with pytest.raises(StudyError, match="--dt"):
        plan_for(True, dt_frames=(9, 4))


@pytest.mark.parametrize("key", ["row1_flowe", "row2_pool_no_decoder", "row3_pool_top_down", "row4_pool_lateral",
                                 "row5_sdm_no_pool", "row7_poodle", "pooled_only", "subcrops_0.54-1.00"])  # fmt: skip
def test_pretrain_config_is_the_variant_at_study_scale(key, tmp_path):
    cfg = pretrain_config(VARIANTS[key], FULL, tmp_path / "shards", seed=2)
    assert cfg.model.arch == "resnet18" and tuple(cfg.data.resolution) == (64, 128)
    assert cfg.data.dataset == "shards" and cfg.run.seed == 2 and cfg.subcrops.size == 32
    assert cfg.model.dilated == (key in ("row1_flowe", "row2_pool_no_decoder", "row4_pool_lateral"))
    assert cfg.objective.pooled == (key != "row1_flowe" and key != "row5_sdm_no_pool")
    assert cfg.objective.dense == (key != "pooled_only")
    if key.startswith("subcrops_"):
        assert tuple(cfg.subcrops.area) == (0.54, 1.0) and cfg.subcrops.target_area_max == 1.0
    # The cosine horizon ends exactly at the study's step count.
    sched = Schedule.from_config(cfg, FULL.pairs // cfg.data.repeat, None)
    assert sched.stop_step == sched.total_steps == FULL.pretrain_steps
    assert sched.warmup_steps == FULL.pretrain_steps // 10
    assert all("=" in s for s in SCALE)


@pytest.mark.parametrize("key,method,lr", [("byol", "byol", 0.2), ("dino", "dino", 9.375e-4),
                                           ("densecl", "densecl", 0.009375), ("pixpro", "pixpro", 1e-3)])  # fmt: skip
def test_baselines_keep_their_recipe_at_the_common_scale(key, method, lr, tmp_path):
    from poodle.config import load_config

    v = VARIANTS[key]
    assert v.family == "baseline"
    cfg = pretrain_config(v, replace(FULL, overrides=("subcrops.size=48",)), tmp_path / "shards", seed=1)
    own = load_config(v.config)
    assert cfg.method == method and cfg.optim.optimizer == own.optim.optimizer and cfg.optim.lr == lr
    assert cfg.model.arch == "resnet18" and tuple(cfg.data.resolution) == (64, 128) and cfg.data.dataset == "shards"
    assert cfg.optim.batch_size == 8 and cfg.run.seed == 1
    assert cfg.subcrops.size == own.subcrops.size  # PooDLe-method overrides (--set) do not reach a baseline
    sched = Schedule.from_config(cfg, FULL.pairs // cfg.data.repeat, None)
    assert sched.stop_step == sched.total_steps == FULL.pretrain_steps
    # FlowE as released is the PooDLe method: it gets the PooDLe scale and the plan's overrides.
    flowe = pretrain_config(VARIANTS["flowe_release"], replace(FULL, overrides=("subcrops.size=48",)), tmp_path, 0)
    assert flowe.subcrops.size == 48 and flowe.model.dilated and not flowe.objective.pooled


def test_check_plan_refuses_foreign_folders(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("x")
    with pytest.raises(StudyError, match="not empty; pass --overwrite"):
        _check_plan(foreign, QUICK, overwrite=False)
    with pytest.raises(StudyError, match="refusing to delete"):
        _check_plan(foreign, QUICK, overwrite=True)
    study = tmp_path / "study"
    _check_plan(study, QUICK, overwrite=False)
    _check_plan(study, QUICK, overwrite=False)  # same plan: continue
    with pytest.raises(StudyError, match="another plan"):
        _check_plan(study, FULL, overwrite=False)
    _check_plan(study, FULL, overwrite=True)
    assert json.loads((study / "plan.json").read_text())["name"] == "full"
    # A plan.json from before the dt_frames and extra_readouts fields: their defaults were its behaviour, so the
    # same study continues and the plan's further readout is added.
    old = {k: v for k, v in json.loads((study / "plan.json").read_text()).items()
           if k not in ("dt_frames", "extra_readouts")}  # fmt: skip
    (study / "plan.json").write_text(json.dumps(old))
    _check_plan(study, FULL, overwrite=False)
    assert json.loads((study / "plan.json").read_text())["extra_readouts"] == [
        ["native", ["class_weight=median_frequency"]]
    ]
    (study / "plan.json").write_text(json.dumps({**old, "dt_frames": [15, 30]}))
    with pytest.raises(StudyError, match="another plan"):
        _check_plan(study, FULL, overwrite=False)


def test_cli_list_and_errors(capsys, tmp_path):
    assert main(["study", "synthdrive", "--out", str(tmp_path / "s"), "--list"]) == 0
    printed = capsys.readouterr().out
    assert "row7_poodle" in printed and "model.arch=resnet18" in printed
    assert main(["study", "synthdrive", "--out", str(tmp_path / "s"), "--variants", "row9"]) == 2
    assert "unknown variant" in capsys.readouterr().err
    assert main(["study", "synthdrive", "--out", str(tmp_path / "s"), "--dt", "15"]) == 2
    assert "--dt takes two frame gaps" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ end to end


TINY = StudyPlan(name="tiny", variants=("random", "row7_poodle", "row1_flowe", "byol"), seeds=2, pretrain_steps=2,
                 readout_steps=2, pairs=16, train_videos=2, train_images=8, val_images=4, alignment_pairs=4,
                 figures=1, readout_overrides=FULL.readout_overrides, claims=FULL.claims, dt_frames=(4, 6))  # fmt: skip


@pytest.mark.slow
def test_tiny_study_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "study"
    summary = run_study(out, TINY, jobs=2, progress=False)
    assert set(summary["variants"]) == set(TINY.variants)
    for key in TINY.variants:
        entry = summary["variants"][key]
        assert entry["seeds"] == [0, 1]
        assert len(entry["mIoU"]["All"]["values"]) == 2
    job = json.loads((out / "runs" / "row7_poodle" / "seed1" / "job.json").read_text())
    assert job["features"] == "sdm" and job["pretrain"]["loss"] > 0
    assert set(job["alignment"]) >= {"warped", "same_place", "shuffled", "warped_moving"}
    assert "alignment_dense_head" in job  # a dense branch: its head's alignment is measured too
    assert "alignment_dense_head" not in json.loads((out / "runs" / "random" / "seed0" / "job.json").read_text())
    assert json.loads((out / "plan.json").read_text())["claims"] == list(CLAIMS.values())
    assert json.loads((out / "data" / "shards" / "prepare.json").read_text())["config"]["data"]["dt_frames"] == [4, 6]
    assert (out / "runs" / "row7_poodle" / "seed0" / "pretrain" / "last.pt").is_file()
    report = (out / "report.md").read_text()
    assert "| PooDLe (row 7) | Table 4 row 7 | 2 |" in report and "## Claims" in report
    assert (
        "2. PooDLe beats FlowE on All and on Small mIoU" in report
        and "not run in this study: densecl, dino, flowe_release, pixpro" in report
    )
    byol = json.loads((out / "runs" / "byol" / "seed0" / "job.json").read_text())
    assert byol["features"] == "layer4"  # an image-level baseline is read out on its dilated layer4
    ro = json.loads((out / "runs" / "byol" / "seed0" / "readout" / "results.json").read_text())
    assert ro["config"]["class_weight"] == "median_frequency" and ro["config"]["eval_resize"] == 256
    assert (out / "figures" / "study_miou.png").is_file()
    assert "## Seed noise" in report and "differ significantly" in report
    assert "## Subcrop hits on the study's train images" in report and "| 0.02 – 0.03 |" in report
    # Rerun: every job is done, nothing is retrained (job.json untouched); the data is kept too.
    stamp = (out / "runs" / "row7_poodle" / "seed0" / "job.json").stat().st_mtime_ns
    shards = (out / "data" / "shards" / "index.json").stat().st_mtime_ns
    capsys.readouterr()
    run_study(out, TINY, jobs=1, progress=False)
    assert (out / "runs" / "row7_poodle" / "seed0" / "job.json").stat().st_mtime_ns == stamp
    assert (out / "data" / "shards" / "index.json").stat().st_mtime_ns == shards
    # An interrupted job (no job.json) is redone from its checkpoint; the others are kept.
    (out / "runs" / "row1_flowe" / "seed1" / "job.json").unlink()
    run_study(out, replace(TINY), jobs=1, progress=False)
    log = (out / "runs" / "row1_flowe" / "seed1" / "job.log").read_text()
    assert "nothing to do" in log  # pretraining was complete: resumed at its stop step
    # A readout added to the finished study: every run is read out again, nothing is pretrained again.
    ckpt = (out / "runs" / "row7_poodle" / "seed0" / "pretrain" / "last.pt").stat().st_mtime_ns
    summary = run_study(out, replace(TINY, extra_readouts=NATIVE_READOUT), jobs=2, progress=False)
    assert (out / "runs" / "row7_poodle" / "seed0" / "pretrain" / "last.pt").stat().st_mtime_ns == ckpt
    job = json.loads((out / "runs" / "random" / "seed1" / "job.json").read_text())
    assert (
        set(job["extra_readouts"]) == {"native"} and "All" in job["extra_readouts"]["native"]["group_metrics"]["mIoU"]
    )
    ro = json.loads((out / "runs" / "byol" / "seed0" / "readout_native" / "results.json").read_text())
    assert ro["config"]["class_weight"] == "median_frequency" and ro["config"]["eval_resize"] is None
    assert set(summary["extra_readouts"]["native"]["variants"]) == set(TINY.variants)
    assert (
        "## Readout `native`" in (out / "report.md").read_text()
        and (out / "figures" / "study_miou_native.png").is_file()
    )
    # Each invocation's wall time is kept (4 so far); --report-only adds none.
    assert len(summary["wall_seconds_runs"]) == 4 and "over 4 invocations" in (out / "report.md").read_text()
    from poodle.study.report import write_report

    assert write_report(out, replace(TINY, extra_readouts=NATIVE_READOUT))["wall_seconds_runs"] == summary[
        "wall_seconds_runs"]  # fmt: skip
    with pytest.raises(StudyError, match="another plan"):  # anything else changed is still another plan
        run_study(out, replace(TINY, extra_readouts=NATIVE_READOUT, seeds=3), jobs=1, progress=False)


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "\nState:\tZ" not in status.read_text()  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_workers_exit_with_the_study_process(tmp_path):
    # A study killed with SIGKILL/SIGTERM skips the pool's shutdown; its workers must not train on as orphans.
    script = tmp_path / "parent.py"
    script.write_text(
        "import os\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from multiprocessing import get_context\n"
        "from poodle.study.synthdrive import _exit_with_parent\n"
        "if __name__ == '__main__':\n"
        "    pool = ProcessPoolExecutor(1, mp_context=get_context('spawn'), initializer=_exit_with_parent,\n"
        "                               initargs=(os.getpid(),))\n"
        "    print(pool.submit(os.getpid).result(), flush=True)\n"
        "    os._exit(0)  # no cleanup, as under SIGKILL\n"
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    worker = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 15
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(worker)
