"""benchmarks/train_step.py runs end to end on CPU: both paths, the engine's loader over freshly prepared
shards, the release's per-step RAFT on the reference path, the memory model, and a JSON report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import train_step  # noqa: E402

TINY = ["data.resolution=[64,128]", "model.proj_hidden_dim=64", "model.proj_out_dim=32", "subcrops.num=2",
        "subcrops.size=32"]  # fmt: skip


@pytest.mark.slow
def test_train_step_harness_end_to_end(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["--config", "cpu", "--steps", "1", "--warmup", "0", "--data", "shards", "--workers", "1",
            "--flow", "release", "--predict-memory", "--roofline", "--json", str(out), *TINY]  # fmt: skip
    assert train_step.main(argv) == 0
    printed = capsys.readouterr().out
    assert "ours/reference:" in printed and "RAFT-large x24" in printed
    report = json.loads(out.read_text())
    assert set(report["paths"]) == {"reference", "ours"}
    assert report["raft_gflop_per_pair"] > report["gflop_per_pair"] > 0  # RAFT outweighs this tiny model
    assert report["predicted_peak_gib"] > 0
    assert report["roofline"]["pairs_per_s"] > 0 and 0 < report["roofline"]["mfu"] < 1
    for result in report["paths"].values():
        assert result["median_s"] > 0 and 0 <= result["data_wait_share"] < 1
        assert result["pairs_per_s"] == pytest.approx(2 / result["median_s"])


def test_user_shards_must_match_the_resolution(tmp_path):
    (tmp_path / "index.json").write_text(json.dumps({"poodle": {"resolution": [32, 64], "repeat": 2}}))
    cfg = train_step.build_config("cpu", TINY)
    with pytest.raises(SystemExit, match=r"prepared at \[32, 64\]"):
        train_step.Inputs(cfg, train_step.torch.device("cpu"), 2, str(tmp_path), 0, 1, 1)


def test_a_folder_without_shards_is_refused_by_name(tmp_path):
    cfg = train_step.build_config("cpu", TINY)
    with pytest.raises(SystemExit, match="no index.json there"):
        train_step.Inputs(cfg, train_step.torch.device("cpu"), 2, str(tmp_path / "missing"), 0, 1, 1)
