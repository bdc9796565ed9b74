"""Fault injection, one test per row of the fault -> action -> kept table in docs/training.md.

Each fault is real: a process killed with SIGKILL while writing, a signal delivered mid-step, a learning rate that
makes BatchNorm statistics overflow, NaN gradients, paths under files and read-only folders, empty and malicious
checkpoint files, and folders of a user's own files. All on CPU in seconds.
"""

import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from poodle.cli import main
from poodle.config import load_config
from poodle.engine.checkpoint import CheckpointError, atomic_save, load_checkpoint
from poodle.engine.health import CollapseMonitor, state_nonfinite
from poodle.engine.pair_sources import build_pair_source
from poodle.engine.train import TrainingError, pretrain
from poodle.output_dir import MARKER, OutputDirError, check_run_dir, check_writable
from test_engine import TINY, _train


def _user_folder(path):
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("years of work")
    return path


# ---- crashes and signals


def test_kill_9_during_a_checkpoint_write_keeps_the_previous_one(tmp_path):
    """A child process rewrites a 64 MB checkpoint in a loop; SIGKILL lands mid-write. The old file stays loadable
    and the next training start removes the partial temporary."""
    run = tmp_path / "run"
    run.mkdir()
    atomic_save({"step": 7, "w": torch.zeros(4)}, run / "last.pt")
    child = textwrap.dedent(f"""
        import sys, torch
        from poodle.engine.checkpoint import atomic_save
        big = {{"step": 8, "w": torch.zeros(16 << 20)}}
        print("ready", flush=True)
        while True:
            atomic_save(big, {str(run / "last.pt")!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    for _ in range(2000):  # wait until a partial temporary exists, then kill the writer inside its write
        if list(run.glob(".last.pt.*.tmp")):
            break
    proc.kill()
    proc.wait()
    assert load_checkpoint(run / "last.pt")["step"] in (7, 8)  # the old file or a complete new one, never torn
    if not list(run.glob(".last.pt.*.tmp")):
        pytest.skip("the kill landed between two writes; nothing partial to clean up this time")
    from poodle.engine.train import _remove_stale_temporaries

    _remove_stale_temporaries(run)
    assert not list(run.glob("*.tmp")) and (run / "last.pt").is_file()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_step_saves_that_step_and_stops(tmp_path, sig):
    """The signal arrives while step 3's batch is being read; step 3 finishes, is saved, and the run stops."""
    cfg = load_config("synthdrive", [*TINY, "run.ckpt_every=100"])
    source, flow = build_pair_source(cfg)

    class Signalling:
        num_videos = source.num_videos
        videos_per_rank = staticmethod(source.videos_per_rank)

        def __call__(self, start, stop, info):
            for step, batch in enumerate(source(start, stop, info), start=start):
                if step == 2:
                    os.kill(os.getpid(), sig)  # handled in this thread before the next bytecode
                yield batch

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    result = pretrain(cfg, tmp_path / "run", Signalling(), flow, stop_step=50)
    assert result["interrupted"] == int(sig) and result["step"] == 3
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 3
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before  # handlers restored


# ---- divergence and collapse


def test_a_learning_rate_that_overflows_batchnorm_is_stopped_unsaved(tmp_path):
    """The issue's case: optim.lr=1e6 keeps the loss finite but drives BatchNorm running_var to inf."""
    with pytest.raises(TrainingError, match=r"diverged: non-finite values in .*running_var.* stopping without saving"):
        _train(tmp_path / "run", 6, ["optim.lr=1e6"])
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["step"] == 2
    assert all(torch.isfinite(v).all() for v in ckpt["networks"].values() if v.is_floating_point())


def test_nan_gradients_are_caught_before_the_next_save(tmp_path):
    cfg = load_config("synthdrive", [*TINY, "run.log_every=3", "run.ckpt_every=3"])
    source, flow = build_pair_source(cfg)
    import poodle.engine.train as train

    real = train.grad_norm
    calls = []

    def poisoned(params):
        calls.append(1)
        if len(calls) == 5:  # step 5: the gradients go NaN (as under an fp16 overflow)
            next(iter(params)).grad.fill_(float("nan"))
        return real(params)

    train.grad_norm = poisoned
    try:
        with pytest.raises(TrainingError, match=r"loss or gradient norm at or before step 6.*holds step 3"):
            pretrain(cfg, tmp_path / "run", source, flow, stop_step=9)
    finally:
        train.grad_norm = real
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 3


def test_state_check_finds_an_inf_buffer():
    bn = torch.nn.BatchNorm2d(4)
    assert not bool(state_nonfinite(bn))
    bn.running_var[1] = float("inf")
    assert bool(state_nonfinite(bn))


def test_collapse_warns_then_stops_without_saving(tmp_path, capsys):
    # Healthy spreads at initialisation are ~0.8 (see metrics.jsonl); a threshold of 0.99 makes them "collapsed".
    with pytest.raises(TrainingError, match=r"features collapsed: .* 2 logged steps in a row since step 1"):
        _train(tmp_path / "run", 6, ["run.collapse_threshold=0.99", "run.collapse_patience=2"])
    assert "feature spread near 0" in capsys.readouterr().err
    assert not (tmp_path / "run" / "last.pt").exists()  # step 2 would have been saved: it was not


def test_collapse_monitor_resets_on_a_healthy_step():
    m = CollapseMonitor(threshold=0.01, patience=3)
    assert m.update(1, {"dense_std": 0.001, "loss": 1.0}) and m.count == 1
    assert m.update(2, {"dense_std": 0.5, "pooled_std": 0.002}) and m.count == 2
    assert m.update(3, {"dense_std": 0.5, "pooled_std": 0.9}) is None and m.count == 0
    warn_only = CollapseMonitor(threshold=0.01, patience=0)
    for s in range(100):
        warn_only.update(s, {"dense_std": 0.0})
    assert not warn_only.collapsed


# ---- paths and files


def test_run_folder_under_a_file_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["pretrain", "--out", str(tmp_path / "f" / "run"), "--steps", "1", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a file, not a folder" in err


def test_read_only_output_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(ro) else real_access(p, mode))
    with pytest.raises(OutputDirError, match="cannot create .*ro/run: cannot write to .*ro"):
        check_writable(ro / "run")
    assert main(["synth", str(ro / "sd")]) == 2
    assert main(["pretrain", "--out", str(ro / "run"), "--steps", "1", *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all("cannot write to" in line and "permission denied" in line for line in err)


def test_pretrain_refuses_a_folder_of_other_files_but_not_scheduler_logs(tmp_path):
    folder = _user_folder(tmp_path / "mine")
    with pytest.raises(OutputDirError, match=r"holds files poodle did not write \(thesis.tex\)"):
        check_run_dir(folder)
    slurm = tmp_path / "slurm_run"
    slurm.mkdir()
    (slurm / "12345.out").write_text("sbatch log")
    assert check_run_dir(slurm) == slurm.absolute()
    with pytest.raises(TrainingError, match="holds files poodle did not write"):
        _train(folder, 1)
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.tex"]


def test_overwrite_never_deletes_a_user_folder_anywhere(tmp_path, capsys):
    folder = _user_folder(tmp_path / "mine")
    (folder / "meta.json").write_text("{}")  # a file with a poodle-like name does not make it poodle's
    assert main(["synth", str(folder), "--overwrite", "--preset", "small"]) == 2
    assert main(["prepare", "--out", str(folder), "--pairs", "1", "--overwrite"]) == 2
    assert main(["study", "synthdrive", "--out", str(folder), "--overwrite", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.count("refusing to delete") == 3, err
    assert (folder / "thesis.tex").read_text() == "years of work"


def test_a_synthdrive_dataset_is_marked_and_replaceable(tmp_path):
    from poodle.data.synthdrive import generate_dataset

    kw = dict(preset="small", progress=False, train_videos=1, val_videos=1, train_images=1, val_images=1,
              seconds=0.5, flow_pairs=0, resolution=(64, 64))  # fmt: skip
    generate_dataset(tmp_path / "sd", **kw)
    assert (tmp_path / "sd" / MARKER).is_file()
    generate_dataset(tmp_path / "sd", overwrite=True, **kw)
    legacy = tmp_path / "legacy"  # made before markers: exactly the dataset's own names
    shutil.copytree(tmp_path / "sd", legacy)
    (legacy / MARKER).unlink()
    generate_dataset(legacy, overwrite=True, **kw)
    (legacy / "notes.txt").write_text("mine")
    (legacy / MARKER).unlink()
    with pytest.raises(ValueError, match="refusing to delete"):
        generate_dataset(legacy, overwrite=True, **kw)


def test_bad_checkpoint_files_are_named_with_their_reason(tmp_path, capsys):
    empty = tmp_path / "zero.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"zero.pt: the file is empty \(0 bytes\)"):
        load_checkpoint(empty)

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    evil = tmp_path / "evil.pt"
    torch.save({"state": Payload()}, evil)
    assert main(["export", str(evil), str(tmp_path / "out.pth")]) == 2
    err = capsys.readouterr().err
    assert "posix.system" in err and "will not unpickle" in err
    assert "weights_only" not in err and not (tmp_path / "pwned").exists()


def test_disk_full_reports_the_space_when_the_write_failed(tmp_path, monkeypatch):
    import errno

    import poodle.engine.checkpoint as ck

    seen = []

    def usage(folder):
        seen.append(sorted(p.name for p in tmp_path.iterdir()))  # was the partial file still there?
        return shutil._ntuple_diskusage(100, 100, 0)

    def full(obj, f):
        f.write(b"x" * 10)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck.shutil, "disk_usage", usage)
    monkeypatch.setattr(ck.torch, "save", full)
    with pytest.raises(CheckpointError, match=r"No space left on device \(0 MiB free on its filesystem when"):
        atomic_save({"step": 1}, tmp_path / "last.pt")
    assert seen and any(name.endswith(".tmp") for name in seen[0])  # measured before the cleanup
    assert list(tmp_path.iterdir()) == []


def test_progress_lines_from_step_1_without_a_terminal(tmp_path, capsys):
    _train(tmp_path / "run", 2, ["run.log_every=2"])
    out = capsys.readouterr().out
    assert "step 1/2:" in out and "s/step" in out  # the heartbeat of the unlogged first step
    assert "step 2: loss" in out
