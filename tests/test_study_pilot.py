"""benchmarks/study_pilot.py: known answers on tiny SynthDrive pairs (identical frames, a stopped camera), the
ego-speed bins against the scenario's stopped flag, and the CLI end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from poodle.config import SubcropConfig
from poodle.data.synthdrive import SynthDriveSequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import study_pilot  # noqa: E402

HW = (64, 128)


def _stopped_index(seed: int = 0) -> int:
    return next(i for i in range(40) if SynthDriveSequence(seed=seed, index=i, resolution=HW).scene.camera.speed == 0)


def test_identical_frames_and_a_stopped_camera_leave_almost_every_pixel_valid_and_never_fall_back():
    cfg = SubcropConfig()
    moving = SynthDriveSequence(seed=0, index=0, resolution=HW)
    assert moving.scene.camera.speed > 0
    same = study_pilot.pair_stats(moving, 10, 0, cfg, draws=2)  # zero flow: every centre is in bounds
    assert same["valid"] > 0.98 and same["fallback"] == 0.0
    stopped = study_pilot.pair_stats(SynthDriveSequence(seed=0, index=_stopped_index(), resolution=HW), 10, 8, cfg, 2)
    assert stopped["valid"] > 0.85 and stopped["fallback"] == 0.0  # only other road users move
    far = study_pilot.pair_stats(moving, 10, 30, cfg, draws=2, behind="out")
    for s in (same, stopped, far):
        assert all(0.0 <= v <= 1.0 for v in s.values())
        assert s["valid"] == pytest.approx((s["valid_fw"] + s["valid_bw"]) / 2)
    assert far["valid"] < stopped["valid"]  # driving 1 s forward loses the image border and the road below


def test_speed_bins_follow_the_scenario_stopped_flag():
    for i in range(12):
        cam = SynthDriveSequence(seed=0, index=i, resolution=HW).scene.camera
        stopped = cam.sway_amp == 0 and cam.speed_wobble == 0  # build_scene zeroes these exactly when stopped
        assert (cam.speed == 0) == stopped
        assert study_pilot.speed_bin(cam.speed) == ("stopped" if stopped else "slow" if cam.speed < 9.5 else "fast")
        assert stopped or 5.0 <= cam.speed <= 14.0


def test_cli_table_and_json(tmp_path, capsys):
    out = tmp_path / "pilot.json"
    assert study_pilot.main(["--sequences", "2", "--resolution", "64x128", "--dt", "8", "--draws", "1",
                             "--json", str(out)]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "| all | 2 |" in printed and "dt 8: valid % / fallback %" in printed
    report = json.loads(out.read_text())
    assert sum(row["n"] for row in report["table"][:3]) == 2
    for row in report["table"]:
        assert row["cells"]["8"] is None or 0 <= row["cells"]["8"]["valid"] <= 1
    assert "| Small class |" in printed
    for row in report["small_class_cells"]:  # cells = share x H x W / 64: x4 per doubling of each side
        assert row["cells"]["64x128"] == pytest.approx(row["avg_pixel_pct"] / 100 * 64 * 128 / 64)
        assert row["cells"]["256x512"] == pytest.approx(4 * row["cells"]["128x256"])

    with pytest.raises(SystemExit):
        study_pilot.main(["--resolution", "60x128"])
    assert "multiple of 8" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        study_pilot.main(["--json", str(tmp_path / "missing" / "pilot.json")])
    assert "does not exist or is not writable" in capsys.readouterr().err


def test_small_class_cells_lists_exactly_the_small_classes_present():
    stats, rows = study_pilot.small_class_cells(2, (64, 128), frames=(0,))
    present_small = {r.name for r in stats.rows if r.size == "S" and r.image_pct > 0}
    assert {r["class"] for r in rows} == present_small and stats.images == 2
