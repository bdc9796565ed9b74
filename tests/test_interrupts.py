"""Interrupts and leftovers: Ctrl-C saves like SIGTERM (twice aborts), killed writes leave no litter, a resumed run's
metrics never show a step twice, and the demo and study never evaluate a model whose pretraining was cut short."""

import json
import signal
from pathlib import Path

import pytest

from poodle.engine.checkpoint import load_checkpoint
from poodle.engine.metrics_log import _drop_records_after
from poodle.engine.train import _StopRequest
from test_engine import _train


def test_second_ctrl_c_aborts_at_once():
    stop = _StopRequest(announce=False)
    stop._handle(signal.SIGINT, None)  # the first asks for a save after this step
    assert stop.signal == signal.SIGINT
    with pytest.raises(KeyboardInterrupt):
        stop._handle(signal.SIGINT, None)


def test_stale_checkpoint_temporaries_are_removed_and_nothing_else(tmp_path):
    run = tmp_path / "run"
    _train(run, 1)
    stale = run / ".last.pt.k3j2_x.tmp"
    stale.write_bytes(b"\0" * 1000)  # what a kill -9 during atomic_save leaves behind
    notes = run / "notes.tmp"
    notes.write_text("mine")
    _train(run, 2)
    assert not stale.exists() and notes.read_text() == "mine"
    assert load_checkpoint(run / "last.pt")["step"] == 2


def test_metrics_past_the_resumed_step_are_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in (10, 20, 30, 40)]
    path.write_text("\n".join(lines) + '\n{"step": 50, "lo')  # and a line torn by a crash
    _drop_records_after(path, 20)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [10, 20]
    _drop_records_after(path, 20)  # nothing to drop: unchanged
    assert len(path.read_text().splitlines()) == 2


def test_resume_from_an_older_checkpoint_keeps_each_step_once(tmp_path):
    run = tmp_path / "run"
    _train(run, 2, ["run.log_every=1", "run.ckpt_every=1"])
    older = load_checkpoint(run / "last.pt")
    _train(run, 4, ["run.log_every=1", "run.ckpt_every=1"])
    import torch

    torch.save(older, run / "last.pt")  # as if the last two checkpoints had been lost with a crash
    _train(run, 3, ["run.log_every=1", "run.ckpt_every=1"])
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_demo_stops_without_readouts_when_pretraining_is_interrupted(tmp_path, monkeypatch, capsys):
    import poodle.engine.train as train
    from poodle.cli import main

    def interrupted(cfg, run_dir, *args, **kwargs):
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        return {"step": 3, "checkpoint": str(Path(run_dir) / "last.pt"), "networks": None,
                "interrupted": int(signal.SIGINT)}  # fmt: skip

    monkeypatch.setattr(train, "pretrain", interrupted)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick"]) == 130
    err = capsys.readouterr().err
    assert "interrupted during pretraining at step 3 of 4" in err and "no readout" in err
    assert not (out / "readout_poodle").exists() and not (out / "readout_scratch").exists()
