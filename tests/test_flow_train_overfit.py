"""benchmarks/flow_train_overfit.py: the supervised field fit must leave zero flow (a working harness), and bad
arguments are one-line errors."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import flow_train_overfit  # noqa: E402


def _epes(text: str) -> list[float]:
    return [float(m) for m in re.findall(r"EPE\s+([0-9.]+) px", text)]


def test_supervised_field_fit_moves_far_below_zero_flow(capsys):
    rc = flow_train_overfit.main(["--model", "field", "--loss", "supervised", "--lr", "0.5", "--steps", "50",
                                  "--sequences", "2", "--resolution", "64x128"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    zero = float(re.search(r"zero flow EPE ([0-9.]+)", out).group(1))
    epes = _epes(out)
    assert zero > 1.0 and epes[0] == zero  # the field starts at zero flow
    assert epes[-1] < 0.3 * zero


def test_unsupervised_raft_step_on_held_out_pairs_runs_and_reports(capsys):
    rc = flow_train_overfit.main(["--loss", "unsupervised", "--steps", "1", "--sequences", "2", "--iters", "2",
                                  "--resolution", "128x128", "--train-pairs", "2"])  # fmt: skip
    assert rc == 0
    assert len(_epes(capsys.readouterr().out)) == 3  # zero flow, step 0, step 1


def test_bad_arguments_are_one_line_errors(capsys):
    assert flow_train_overfit.main(["--resolution", "128by256"]) == 2
    assert "--resolution '128by256'" in capsys.readouterr().err
    assert flow_train_overfit.main(["loss.no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err
    assert flow_train_overfit.main(["--model", "field", "--train-pairs", "4", "--resolution", "64x128"]) == 2
    assert "cannot train on --train-pairs" in capsys.readouterr().err
