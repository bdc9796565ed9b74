"""The pretraining engine: exact resume, DDP on gloo with 2 processes, checkpoints, clear stops."""

import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from poodle.config import load_config
from poodle.engine.checkpoint import CheckpointError, atomic_save, load_checkpoint
from poodle.engine.pair_sources import build_pair_source
from poodle.engine.sampler import StepBatchSampler
from poodle.engine.train import TrainingError, pretrain

TINY = [
    "model.proj_hidden_dim=64",
    "model.proj_out_dim=32",
    "subcrops.size=32",
    "optim.batch_size=4",
    "data.workers=0",
    "run.log_every=1",
    "run.ckpt_every=2",
]


def _train(out: Path, steps: int, overrides=(), resume=True):
    cfg = load_config("synthdrive", [*TINY, *overrides])
    source, flow = build_pair_source(cfg)
    return pretrain(cfg, out, source, flow, stop_step=steps, resume=resume)


def test_sampler_is_a_function_of_the_step_and_disjoint_across_ranks():
    a = StepBatchSampler(10, 3, world_size=2, rank=0, seed=1, start_step=0, stop_step=8)
    b = StepBatchSampler(10, 3, world_size=2, rank=1, seed=1, start_step=0, stop_step=8)
    late = StepBatchSampler(10, 3, world_size=2, rank=0, seed=1, start_step=5, stop_step=8)
    steps_a = list(a)
    assert list(late) == steps_a[5:]
    for ka, kb in zip(steps_a, list(b)):
        assert not set(ka) & set(kb)
    # Every video appears once per pass: the first 10 positions of the stream are a permutation.
    stream = [
        k for step in range(4) for r in (0, 1) for k in StepBatchSampler(10, 3, 2, r, 1, 0, 8).keys_for_step(step)
    ]
    assert sorted(k % 10 for k in stream[:10]) == list(range(10))
    assert all(k // 10 == 1 for k in stream[10:20])


def test_resume_is_exact(tmp_path):
    straight = _train(tmp_path / "straight", 4)
    first = _train(tmp_path / "split", 2)
    assert first["step"] == 2
    resumed = _train(tmp_path / "split", 4)
    assert resumed["step"] == 4
    a, b = straight["networks"].state_dict(), resumed["networks"].state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6, rtol=1e-5), k
    # metrics.jsonl continues rather than restarting
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_checkpoint_contents_and_safe_loading(tmp_path):
    _train(tmp_path / "run", 2)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")  # weights_only=True inside
    assert ckpt["step"] == 2
    assert {"networks", "optimizer", "rng", "config", "schedule"} <= ckpt.keys()
    assert ckpt["config"]["model"]["arch"] == "resnet18"
    assert any(k.startswith("target.") for k in ckpt["networks"])
    # Nothing pickled beyond plain data: a weights_only load of a file with an arbitrary object fails clearly.
    bad = tmp_path / "bad.pt"
    torch.save({"x": object()}, bad)
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        load_checkpoint(bad)


def test_atomic_save_keeps_the_old_file_when_the_disk_fills(tmp_path, monkeypatch):
    """A real torch.save into a file whose writes fail after 64 KiB with ENOSPC, as on a full disk."""
    path = tmp_path / "last.pt"
    atomic_save({"step": 1}, path)
    real_fdopen = os.fdopen

    class FullDisk(io.RawIOBase):
        def __init__(self, f):
            self.f, self.left = f, 64 * 1024

        def writable(self):
            return True

        def write(self, b):
            if len(b) > self.left:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.left -= len(b)
            return self.f.write(b)

        def fileno(self):
            return self.f.fileno()

        def close(self):
            self.f.close()
            super().close()

    monkeypatch.setattr(os, "fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode)))
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .*last\.pt.* free on its filesystem"):
        atomic_save({"step": 2, "weights": torch.zeros(1 << 16)}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_resuming_with_another_config_is_refused(tmp_path):
    _train(tmp_path / "run", 1)
    with pytest.raises(TrainingError, match=r"different config:\n  model.proj_out_dim: run has 32, now 16"):
        _train(tmp_path / "run", 2, ["model.proj_out_dim=16"])
    # run.* settings may change on resume
    assert _train(tmp_path / "run", 2, ["run.log_every=2"])["step"] == 2


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = load_config("synthdrive", TINY)
    source, flow = build_pair_source(cfg)

    class PoisonedSource:
        num_videos = source.num_videos
        videos_per_rank = staticmethod(source.videos_per_rank)

        def __call__(self, start, stop, info):
            for step, batch in enumerate(source(start, stop, info), start=start):
                if step == 2:
                    batch.flow_ab = torch.full_like(batch.flow_ab, float("nan"))
                    batch.frame_a = torch.full(batch.frame_a.shape, float("nan"))
                yield batch

    with pytest.raises(TrainingError, match=r"non-finite loss or gradient norm at or before step 3.*holds step 2"):
        pretrain(cfg, tmp_path / "run", PoisonedSource(), flow, stop_step=5)
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 2


@pytest.mark.slow
def test_ddp_two_processes_gloo(tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent.parent / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531",
           str(Path(__file__).parent / "helpers" / "ddp_worker.py"), str(out), "3", *TINY]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["step"] == r1["step"] == 3
    assert len(r0["seen"]) == len(r1["seen"]) == 3
    assert all(a != b for a, b in zip(r0["seen"], r1["seen"]))  # ranks read different pairs
    for k, v in r0["weights"].items():  # ... and hold identical weights after the steps
        if "num_batches_tracked" in k or "running" in k:
            continue  # BN statistics are per rank on CPU (SyncBatchNorm needs CUDA)
        assert torch.allclose(v, r1["weights"][k], atol=1e-6), k
    assert load_checkpoint(out / "last.pt")["world_size"] == 2


@pytest.mark.slow
# Preemption, Ctrl-C (saves like SIGTERM), and a scheduler / `timeout` signalling the whole process group, whose
# DataLoader workers must not die first (PyTorch's workers exit on SIGTERM, which used to fail the run unsaved).
@pytest.mark.parametrize("sig,group", [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGTERM, True)])
def test_signal_saves_and_exits_cleanly(tmp_path, sig, group):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = ["data.workers=1"] if group else []
    cmd = [sys.executable, "-m", "poodle", "pretrain", "--out", str(out), "--steps", "1000", *TINY, *workers]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=group)  # fmt: skip
    deadline = time.time() + 300
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("step 1:") or time.time() > deadline:
            break
    if group:
        os.killpg(proc.pid, sig)  # the process and its DataLoader worker, as SLURM or `timeout` do
    else:
        proc.send_signal(sig)
    rest, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, "".join(lines) + rest
    assert f"received signal {int(sig)}" in rest
    if sig == signal.SIGINT:
        assert "saving after this step" in rest
    step = load_checkpoint(out / "last.pt")["step"]
    assert 1 <= step < 1000


def test_export_loads_into_torchvision(tmp_path):
    import torchvision

    from poodle.cli import main

    _train(tmp_path / "run", 1)
    assert (
        main(["export", str(tmp_path / "run"), str(tmp_path / "r18.pth"), "--decoder", str(tmp_path / "sdm.pth")]) == 0
    )
    sd = torch.load(tmp_path / "r18.pth", weights_only=True)
    missing, unexpected = torchvision.models.resnet18().load_state_dict(sd, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    assert torch.load(tmp_path / "sdm.pth", weights_only=True)
    assert main(["export", str(tmp_path / "nowhere"), str(tmp_path / "x.pth")]) == 2
