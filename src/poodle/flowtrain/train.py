"""The label-free optical-flow training loop (`poodle flow train`), single process or DDP under torchrun.

Per step: a batch of frame pairs for this rank -> joint augmentation (flips, time reversal, photometric jitter of
the network's input) -> RAFT's flows for both directions at every update -> UFlow/SMURF losses (census, edge-aware
smoothness, forward-backward occlusion masking, sequence weighting, optional self-supervision) -> Adam step.

It shares the pretraining loop's machinery: pairs from any pretraining source drawn per (seed, step, rank), atomic
checkpoints in RUN_DIR/last.pt with every rank's RNG state (exact resume), a signal saves the current step and
exits, a non-finite loss stops without saving, metrics.jsonl + TensorBoard on rank 0. Each checkpoint also writes
RUN_DIR/flow_model.pt, a plain torchvision RAFT state dict that `flow.weights` loads.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from poodle.data.optical_flow import TRAINED_FLOW_FILE
from poodle.engine.checkpoint import atomic_save, load_checkpoint, rng_state, set_rng_state
from poodle.engine.distributed import DistInfo, all_reduce_mean, barrier, gather_objects, init_distributed
from poodle.engine.health import grad_norm
from poodle.engine.metrics_log import MetricsLog
from poodle.engine.run_control import (
    StopRequest,
    announce_stop,
    checked_step_flags,
    remove_stale_temporaries,
    stop_after_step,
)
from poodle.engine.train import TrainingError, resolve_device, step_generator
from poodle.flowtrain.config import FlowAugmentConfig, FlowTrainConfig
from poodle.flowtrain.losses import selfsup_crop, selfsup_loss, swap_directions, unsupervised_flow_loss
from poodle.flowtrain.model import UnsupervisedRaft
from poodle.output_dir import OutputDirError, check_run_dir, read_marker, write_marker

RUN_KIND = "flow_train"
# Sections that may change between a run and its resumption (how long and how to run, not what is trained).
RESUMABLE_KEYS = {("run",), ("name",), ("optim", "steps"), ("data", "root"), ("data", "workers")}


def build_flow_pair_source(cfg: FlowTrainConfig):
    """Frame pairs from any pretraining source; their flow (shards, SynthDrive) is never read."""
    from poodle.engine.pair_sources import PairSource

    if cfg.data.dataset == "shards":
        from poodle.data.shards import ShardPairs

        return PairSource(ShardPairs.from_config(cfg.data), cfg)
    if cfg.data.dataset == "synthdrive":
        from poodle.data.synthdrive.pairs import SynthDrivePairs

        return PairSource(SynthDrivePairs(cfg.data, seed=cfg.run.seed, with_flow=False), cfg)
    from poodle.data.pairs import build_pair_dataset

    return PairSource(build_pair_dataset(cfg.data, seed=cfg.run.seed), cfg)


def learning_rate(cfg: FlowTrainConfig, step: int) -> float:
    """Linear warm-up, constant, then (SMURF) halving every `decay_steps` after `decay_after`."""
    o = cfg.optim
    lr = o.lr * min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps else o.lr
    if o.decay_after and step >= o.decay_after:
        lr *= 0.5 ** ((step - o.decay_after) / o.decay_steps)
    return lr


def selfsup_weight(cfg: FlowTrainConfig, step: int) -> float:
    c = cfg.loss
    if c.selfsup <= 0 or step < c.selfsup_after:
        return 0.0
    if c.selfsup_ramp == 0:
        return c.selfsup
    return c.selfsup * min(1.0, (step - c.selfsup_after + 1) / c.selfsup_ramp)


def augment_pair(a: Tensor, b: Tensor, cfg: FlowAugmentConfig, g: torch.Generator) -> tuple[Tensor, Tensor, Tensor,
                                                                                              Tensor]:  # fmt: skip
    """(a, b, a_in, b_in): the pair flipped / time-reversed jointly (which needs no label: the losses are
    label-free), and the network's input with the same brightness/contrast jitter on both frames of a pair."""
    n = a.shape[0]

    def draw(p: float) -> Tensor:
        return torch.rand(n, generator=g, device=a.device) < p

    if cfg.hflip > 0:
        m = draw(cfg.hflip).view(n, 1, 1, 1)
        a, b = torch.where(m, a.flip(-1), a), torch.where(m, b.flip(-1), b)
    if cfg.vflip > 0:
        m = draw(cfg.vflip).view(n, 1, 1, 1)
        a, b = torch.where(m, a.flip(-2), a), torch.where(m, b.flip(-2), b)
    if cfg.swap > 0:
        m = draw(cfg.swap).view(n, 1, 1, 1)
        a, b = torch.where(m, b, a), torch.where(m, a, b)
    gain = 1.0 + cfg.contrast * (2 * torch.rand(n, 1, 1, 1, generator=g, device=a.device) - 1)
    shift = cfg.brightness * (2 * torch.rand(n, 1, 1, 1, generator=g, device=a.device) - 1)
    a_in = ((a - 0.5) * gain + 0.5 + shift).clamp(0, 1)
    b_in = ((b - 0.5) * gain + 0.5 + shift).clamp(0, 1)
    return a, b, a_in, b_in


def _unit(x: Tensor) -> Tensor:
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def flow_step_loss(model, cfg: FlowTrainConfig, a: Tensor, b: Tensor, a_in: Tensor, b_in: Tensor,
                   step: int) -> dict[str, Tensor]:  # fmt: skip
    """One forward and the loss. With self-supervision the student's crops ride in the same batch (one DDP forward);
    the teacher is the network's own final flow on the full frames, detached."""
    n = a.shape[0]
    w_self = selfsup_weight(cfg, step)
    if w_self > 0:
        m = cfg.loss.selfsup_margin
        a_in, b_in = torch.cat((a_in, selfsup_crop(a_in, m))), torch.cat((b_in, selfsup_crop(b_in, m)))
    autocast = a.device.type == "cuda" and cfg.run.precision == "bf16"
    with torch.autocast(device_type=a.device.type, dtype=torch.bfloat16, enabled=autocast):
        flows = model(a_in, b_in, cfg.model.iters)
    k = a_in.shape[0]  # n, or 2n with the student's crops: flows are [A->B (k); B->A (k)]
    full = [torch.cat((f[:n], f[k : k + n])).float() for f in flows]
    occlusion = cfg.loss.occlusion and step >= cfg.loss.occlusion_after
    out = unsupervised_flow_loss(torch.cat((a, b)), torch.cat((b, a)), full, cfg.loss, occlusion)
    if w_self > 0:
        student = torch.cat((flows[-1][n:k], flows[-1][k + n :])).float()
        teacher = full[-1].detach()
        s = selfsup_loss(teacher, swap_directions(teacher), student, swap_directions(student),
                         cfg.loss.selfsup_margin, cfg.loss.selfsup_sigma_teacher,
                         cfg.loss.selfsup_sigma_student)  # fmt: skip
        out["selfsup"] = w_self * s
        out["loss"] = out["loss"] + out["selfsup"]
    out["flow_magnitude"] = full[-1].detach().norm(dim=1).mean()
    return out


def check_resumable(saved: dict[str, Any], cfg: FlowTrainConfig, run_dir: Path) -> None:
    now = cfg.to_dict()
    diffs = []
    for section, values in saved.items():
        if (section,) in RESUMABLE_KEYS:
            continue
        if not isinstance(values, dict):
            if now.get(section) != values:
                diffs.append(f"{section}: run has {values!r}, now {now.get(section)!r}")
            continue
        for key, value in values.items():
            if (section, key) not in RESUMABLE_KEYS and now.get(section, {}).get(key) != value:
                diffs.append(f"{section}.{key}: run has {value!r}, now {now.get(section, {}).get(key)!r}")
    if diffs:
        raise TrainingError(
            f"{run_dir} holds a flow run with a different config:\n  " + "\n  ".join(diffs)
            + "\nUse another --out folder, pass --no-resume to start over in this one, or rerun with the run's config."
        )  # fmt: skip


def _write_model(raft: torch.nn.Module, cfg: FlowTrainConfig, run_dir: Path, step: int) -> None:
    atomic_save(raft.state_dict(), run_dir / TRAINED_FLOW_FILE)
    about = {"size": cfg.model.size, "train_iters": cfg.model.iters, "step": step,
             "resolution": list(cfg.data.resolution), "dataset": cfg.data.dataset,
             "use": f"flow.source=raft_{cfg.model.size} flow.weights={run_dir / TRAINED_FLOW_FILE}"}  # fmt: skip
    tmp = run_dir / "flow_model.json.tmp"
    tmp.write_text(json.dumps(about, indent=1) + "\n")
    tmp.replace(run_dir / "flow_model.json")


def train_flow(cfg: FlowTrainConfig, run_dir: str | Path, pair_source, stop_step: int | None = None,
               resume: bool = True) -> dict[str, Any]:  # fmt: skip
    """Train RAFT without labels. `pair_source(start, stop, info)` yields PairBatch-like batches for this rank
    (see `build_flow_pair_source`). Returns the final step, the paths written, `interrupted` and the last logged
    values."""
    try:
        run_dir = check_run_dir(run_dir, RUN_KIND)
    except OutputDirError as e:
        raise TrainingError(str(e)) from e
    info: DistInfo = init_distributed("cuda" if cfg.run.device == "cuda" else "cpu")
    device = resolve_device(cfg.run.device, info)
    stop_at = cfg.optim.steps if stop_step is None else stop_step
    try:
        pair_source.videos_per_rank(info)
    except ValueError as e:
        raise TrainingError(str(e)) from e

    torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
    net = UnsupervisedRaft(cfg.model.size, cfg.model.init).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)

    start_step = 0
    last = run_dir / "last.pt"
    if info.is_main:
        remove_stale_temporaries(run_dir)
    if resume and last.exists():
        ckpt = load_checkpoint(last, map_location=device)
        check_resumable(ckpt["config"], cfg, run_dir)
        net.raft.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"][min(info.rank, len(ckpt["rng"]) - 1)])
        start_step = int(ckpt["step"])
        if info.is_main:
            print(f"resuming {run_dir} from step {start_step}", flush=True)
    elif info.is_main and (run_dir / "metrics.jsonl").exists() and not resume:
        (run_dir / "metrics.jsonl").unlink()
    if start_step >= stop_at:
        if info.is_main:
            print(f"{run_dir}: already at step {start_step} >= stop step {stop_at}; nothing to do")
        return {"step": start_step, "checkpoint": str(last), "model": str(run_dir / TRAINED_FLOW_FILE),
                "interrupted": None, "raft": net.raft}  # fmt: skip

    model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None) \
        if info.enabled else net  # fmt: skip
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if read_marker(run_dir) is None:
            write_marker(run_dir, RUN_KIND)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    log = MetricsLog(run_dir, info.is_main, start_step, stop_at, desc="flow train")
    stop = StopRequest(announce=info.is_main)
    stop.install()

    def save(step: int) -> None:
        states = gather_objects(rng_state(), info)
        if info.is_main:
            ckpt = {"step": step, "model": net.raft.state_dict(), "optimizer": optimizer.state_dict(), "rng": states,
                    "config": cfg.to_dict(), "world_size": info.world_size}  # fmt: skip
            atomic_save(ckpt, last)
            _write_model(net.raft, cfg, run_dir, step)
            if cfg.run.keep_every and step % cfg.run.keep_every == 0:
                atomic_save(ckpt, run_dir / f"checkpoint_{step:07d}.pt")
        barrier(info)

    batches = iter(pair_source(start_step, stop_at, info))
    params = [p for p in net.parameters() if p.requires_grad]
    diverged = torch.zeros((), dtype=torch.bool, device=device)
    last_good_step = start_step
    summary: dict[str, Any] = {}
    window_start, window_pairs = time.perf_counter(), 0
    model.train()
    step = start_step
    try:
        for step in range(start_step, stop_at):
            lr = learning_rate(cfg, step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = next(batches)
            a = _unit(batch.frame_a.to(device, non_blocking=True))
            b = _unit(batch.frame_b.to(device, non_blocking=True))
            g = step_generator(device, cfg.run.seed, info.rank, step)
            a, b, a_in, b_in = augment_pair(a, b, cfg.augment, g)
            out = flow_step_loss(model, cfg, a, b, a_in, b_in, step)
            loss = out["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = grad_norm(params)
            if cfg.optim.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip_grad)
            diverged |= ~torch.isfinite(loss.detach()) | ~torch.isfinite(gnorm)
            optimizer.step()
            window_pairs += a.shape[0] * info.world_size

            done = step + 1
            is_log = done % cfg.run.log_every == 0 or done == stop_at
            is_ckpt = done % cfg.run.ckpt_every == 0 or done == stop_at
            stopping = stop_after_step(stop, is_log, is_ckpt, info)
            log.advance(1, logged=is_log, **({"loss": float(loss.detach())} if is_log else {}))
            if is_log or is_ckpt or stopping:
                loss_bad, state_bad, stop_any = checked_step_flags(diverged, net, stop, info)
                if loss_bad or state_bad:
                    kept = f"{last} holds step {last_good_step} and is kept" if last_good_step > 0 \
                        else "nothing was saved"  # fmt: skip
                    raise TrainingError(
                        f"flow training diverged: non-finite loss, gradient or weights at or before step {done}; "
                        f"stopping without saving ({kept}). Lower optim.lr (now {cfg.optim.lr:g}) or check the data."
                    )
                stopping = stopping or (stop_any and info.enabled)
                is_ckpt = is_ckpt or stopping
            if is_log:
                elapsed = time.perf_counter() - window_start
                values = {k: float(all_reduce_mean(v.detach().float(), info)) for k, v in out.items()}
                values.update(grad_norm=float(gnorm), lr=lr, pairs_per_s=window_pairs / max(elapsed, 1e-9))
                if device.type == "cuda":
                    values["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                log.log(done, values)
                summary = values
                window_start, window_pairs = time.perf_counter(), 0
            if is_ckpt:
                save(done)
                last_good_step = done
            if stopping:
                announce_stop(stop, done, last, info)
                break
    finally:
        stop.restore()
        log.close()
    return {"step": step + 1, "checkpoint": str(last), "model": str(run_dir / TRAINED_FLOW_FILE),
            "interrupted": stop.signal, "raft": net.raft, **summary}  # fmt: skip
