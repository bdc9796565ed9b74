"""`poodle demo --quick` end to end: data, pretraining, two linear readouts, tables."""

import json

import pytest

from poodle.cli import main


@pytest.mark.slow
def test_demo_quick(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick", "--no-scratch"]) == 0
    results = json.loads((out / "readout_poodle" / "results.json").read_text())
    assert results["readout"] == "linear" and results["dataset"] == "synthdrive"
    assert set(results["group_metrics"]["mIoU"]) == {"All", "Small", "Large", "Rare", "Common"}
    assert (out / "pretrain" / "last.pt").is_file()
    assert (out / "readout_poodle" / "figures" / "predictions.png").is_file()
    printed = capsys.readouterr().out
    assert "| Method | Pretrained on | All | Small | Large | Rare | Common |" in printed
    assert main(["demo", "--out", str(out), "--quick"]) == 2  # refuses to overwrite without --overwrite
