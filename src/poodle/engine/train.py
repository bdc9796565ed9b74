"""The PooDLe pretraining loop (single process or DDP under torchrun), in the spirit of DINO's main_dino.py.

One readable function, `pretrain`: build everything, resume from RUN_DIR/last.pt if present, then per step:

    tau, lr     <- per-step schedule arrays (indexed by the global step, so resuming is trivial)
    target      <- EMA of the online networks with momentum tau (at the start of the step, as the release does)
    batch       <- N frame pairs for this rank (+ flow: ground truth, cached, or estimated here)
    losses      <- the method (PooDLe, BYOL, DINO, ...) under bf16 autocast on GPU (losses and warps run in fp32)
    backward, optimizer step; log; checkpoint every `run.ckpt_every` steps and on SIGTERM/SIGUSR1

Every random draw of a step (augmentations, subcrops, which pairs are read) is seeded by (seed, rank, step), so
training N steps, stopping, and resuming for N more gives the same parameters as 2N steps straight.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel

from poodle.config import Config
from poodle.engine.checkpoint import atomic_save, load_checkpoint, rng_state, set_rng_state
from poodle.engine.distributed import DistInfo, all_reduce_mean, barrier, gather_objects, init_distributed
from poodle.engine.health import CollapseMonitor, grad_norm, nonfinite_names
from poodle.engine.metrics_log import MetricsLog
from poodle.engine.optim import build_optimizer, clip_per_parameter
from poodle.engine.run_control import StopRequest as _StopRequest
from poodle.engine.run_control import announce_stop, checked_step_flags, stop_after_step
from poodle.engine.run_control import remove_stale_temporaries as _remove_stale_temporaries
from poodle.model import cosine_schedule
from poodle.objective import PairBatch, build_method
from poodle.output_dir import OutputDirError, check_run_dir, read_marker, write_marker

# Config sections that may change between a run and its resumption (how to run, not what is trained).
RESUMABLE_CHANGES = ("run", "name")
RESUMABLE_DATA_KEYS = ("root", "workers")
METHOD_SECTIONS = ("byol", "dino", "densecl", "pixpro")  # read only when `method` names them


class TrainingError(RuntimeError):
    pass


@dataclass
class Schedule:
    """Step counts derived from the epoch-based config."""

    steps_per_epoch: float
    total_steps: int  # cosine horizon
    stop_step: int  # where training stops
    warmup_steps: int

    @classmethod
    def from_config(cls, cfg: Config, num_videos: int, stop_step: int | None) -> Schedule:
        pairs_per_epoch = cfg.optim.epoch_pairs or num_videos  # one epoch = one pair per video
        steps_per_epoch = pairs_per_epoch / cfg.optim.batch_size
        total = max(1, math.ceil(cfg.optim.schedule_epochs * steps_per_epoch))
        stop = math.ceil(cfg.optim.stop_epochs * steps_per_epoch) if stop_step is None else stop_step
        if stop > total:
            total = stop  # an explicit --steps past the horizon extends it rather than indexing past the end
        return cls(steps_per_epoch, total, max(1, stop), int(cfg.optim.warmup_epochs * steps_per_epoch))


def resolve_device(name: str, info: DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError("run.device=cuda but no CUDA device is available; use --device cpu")
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


def check_resumable(saved: dict[str, Any], cfg: Config, run_dir: Path) -> None:
    """A run folder holds one experiment: refuse to resume it with a different method/data config."""
    now = cfg.to_dict()
    diffs = []
    saved = {"method": "poodle", **saved}  # checkpoints from before `method` existed are PooDLe runs
    for section, values in saved.items():
        if section in RESUMABLE_CHANGES or (section in METHOD_SECTIONS and section != cfg.method):
            continue  # another method's section does not describe this run
        if not isinstance(values, dict) and now.get(section) != values:
            diffs.append(f"{section}: run has {values!r}, now {now.get(section)!r}")
        if isinstance(values, dict):
            for key, value in values.items():
                if section == "data" and key in RESUMABLE_DATA_KEYS:
                    continue
                if section == "optim" and key == "stop_epochs":
                    continue
                if now.get(section, {}).get(key) != value:
                    diffs.append(f"{section}.{key}: run has {value!r}, now {now.get(section, {}).get(key)!r}")
    if diffs:
        raise TrainingError(
            f"{run_dir} holds a run with a different config:\n  "
            + "\n  ".join(diffs)
            + "\nUse another --out folder, pass --no-resume to start over in this one, or rerun with the run's config."
        )


def step_generator(device: torch.device, seed: int, rank: int, step: int) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + rank * 7_919 + step) % (2**63 - 1))
    return g


def pretrain(
    cfg: Config,
    run_dir: str | Path,
    pair_source,
    flow_estimator=None,
    stop_step: int | None = None,
    resume: bool = True,
) -> dict[str, Any]:
    """Pretrain PooDLe. `pair_source(start_step, stop_step, info)` returns an iterator of PairBatch-like batches
    (frame_a, frame_b uint8/float (N, 3, H, W) and optionally flow_ab/flow_ba) for this rank; it also exposes
    `num_videos` (for the epoch length). Without flow in the batch, `flow_estimator.bidirectional` computes it.
    Returns a summary dict: final step, checkpoint path, the trained `networks` and the last logged values."""
    try:  # before any work: a folder poodle cannot write, or one holding someone else's files, is refused now
        run_dir = check_run_dir(run_dir)
    except OutputDirError as e:
        raise TrainingError(str(e)) from e
    info = init_distributed("cuda" if cfg.run.device == "cuda" else "cpu")
    device = resolve_device(cfg.run.device, info)
    sched = Schedule.from_config(cfg, pair_source.num_videos, stop_step)
    try:
        pair_source.videos_per_rank(info)  # checks batch_size / world_size / repeat before any work
    except ValueError as e:
        raise TrainingError(str(e)) from e
    if isinstance(flow_estimator, torch.nn.Module):
        flow_estimator = flow_estimator.to(device)

    # ---- model, optimiser, schedules
    torch.manual_seed(cfg.run.seed)  # identical initial weights on every rank
    objective = build_method(cfg).to(device)
    if info.enabled and device.type == "cuda":
        objective = torch.nn.SyncBatchNorm.convert_sync_batchnorm(objective)
    if cfg.run.channels_last and device.type == "cuda":
        objective = objective.to(memory_format=torch.channels_last)  # inputs are made channels_last in forward
    networks = objective.networks
    optimizer = build_optimizer(networks, cfg.optim)
    lr_schedule = cosine_schedule(cfg.optim.lr, cfg.optim.min_lr, sched.total_steps, sched.warmup_steps)
    tau_schedule = objective.momentum_schedule(sched.total_steps)
    wd_schedule = None
    if cfg.optim.weight_decay_end is not None:  # DINO's cosine weight-decay schedule (decaying groups only)
        wd_schedule = cosine_schedule(cfg.optim.weight_decay, cfg.optim.weight_decay_end, sched.total_steps)

    # ---- resume
    start_step = 0
    last = run_dir / "last.pt"
    if info.is_main:
        _remove_stale_temporaries(run_dir)
    if resume and last.exists():
        ckpt = load_checkpoint(last, map_location=device)
        converted = ckpt.get("converted_from") is not None and int(ckpt["step"]) == 0
        if not converted:
            check_resumable(ckpt["config"], cfg, run_dir)
        try:
            networks.load_state_dict(ckpt["networks"])
        except RuntimeError as e:  # a converted release run fine-tuned with a recipe of another architecture
            raise TrainingError(f"{last} does not fit the model of this config: {str(e).splitlines()[0]}") from e
        if ckpt.get("optimizer") is not None:  # converted weights start with a fresh optimiser
            optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("rng"):
            set_rng_state(ckpt["rng"][min(info.rank, len(ckpt["rng"]) - 1)])
        start_step = int(ckpt["step"])
        if info.is_main:
            what = f"fine-tuning the weights converted from {ckpt['converted_from'].get('source')}" if converted \
                else f"resuming {run_dir} from step {start_step}"  # fmt: skip
            print(what, flush=True)
    elif info.is_main and (run_dir / "metrics.jsonl").exists() and not resume:
        (run_dir / "metrics.jsonl").unlink()  # --no-resume starts over: old metrics would mislead
    if start_step >= sched.stop_step:
        if info.is_main:
            print(f"{run_dir}: already at step {start_step} >= stop step {sched.stop_step}; nothing to do")
        return {"step": start_step, "checkpoint": str(last), "networks": networks}

    model = DistributedDataParallel(objective, device_ids=[device.index] if device.type == "cuda" else None) \
        if info.enabled else objective  # fmt: skip
    if cfg.run.compile:
        # Compile the (DDP-wrapped) module for the forward only; `networks` keeps its plain state-dict names, so
        # checkpoints and exports are the same with or without compilation.
        model = torch.compile(model)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if read_marker(run_dir) is None:
            write_marker(run_dir, "pretrain")
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    log = MetricsLog(run_dir, info.is_main, start_step, sched.stop_step)
    stop = _StopRequest(announce=info.is_main)
    stop.install()

    def save(step: int) -> Path:
        # Every rank's RNG state is gathered so each resumes its own stream; rank 0 writes.
        states = gather_objects(rng_state(), info)
        if info.is_main:
            ckpt = {
                "step": step,
                "networks": networks.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": None,  # bf16 autocast needs no loss scaler
                "rng": states,
                "config": cfg.to_dict(),
                "schedule": {"total_steps": sched.total_steps, "steps_per_epoch": sched.steps_per_epoch},
                "world_size": info.world_size,
            }
            atomic_save(ckpt, last)
            if cfg.run.keep_every and step % cfg.run.keep_every == 0:
                atomic_save(ckpt, run_dir / f"checkpoint_{step:07d}.pt")
        barrier(info)
        return last

    # ---- loop
    batches = iter(pair_source(start_step, sched.stop_step, info))
    # Groups that decay (after resume: the optimiser state replaces the group dicts; the others have 0).
    decaying_groups = [i for i, g in enumerate(optimizer.param_groups) if g["weight_decay"] > 0]
    params = [p for p in networks.parameters() if p.requires_grad]
    # Non-finite loss or gradient norm on any step since the last check; read only on logged/checkpoint steps.
    diverged = torch.zeros((), dtype=torch.bool, device=device)
    collapse = CollapseMonitor(cfg.run.collapse_threshold, cfg.run.collapse_patience)
    last_good_step = start_step
    summary: dict[str, Any] = {}
    window_start, window_pairs, data_wait = time.perf_counter(), 0, 0.0
    model.train()
    step = start_step
    try:
        for step in range(start_step, sched.stop_step):
            for group in optimizer.param_groups:
                group["lr"] = float(lr_schedule[step])
            if wd_schedule is not None:
                for i in decaying_groups:
                    optimizer.param_groups[i]["weight_decay"] = float(wd_schedule[step])
            networks.update_target(float(tau_schedule[step]))

            t_wait = time.perf_counter()
            batch = next(batches)
            batch = _complete_batch(batch, flow_estimator, device, objective.needs_flow)
            data_wait += time.perf_counter() - t_wait

            generator = step_generator(device, cfg.run.seed, info.rank, step)
            out = model(batch, generator)  # bf16 autocast around the networks happens inside
            loss = out["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            objective.after_backward(step, sched.steps_per_epoch)
            if cfg.optim.clip_grad > 0:
                clip_per_parameter(params, cfg.optim.clip_grad)
            gnorm = grad_norm(params)  # after DDP's all-reduce: the same on every rank
            diverged |= ~torch.isfinite(loss.detach()) | ~torch.isfinite(gnorm)
            optimizer.step()
            window_pairs += batch.frame_a.shape[0] * info.world_size

            done = step + 1
            is_log = done % cfg.run.log_every == 0 or done == sched.stop_step
            is_ckpt = done % cfg.run.ckpt_every == 0 or done == sched.stop_step
            stopping = stop_after_step(stop, is_log, is_ckpt, info)
            log.advance(1, logged=is_log, **({"loss": float(loss.detach())} if is_log else {}))
            if is_log or is_ckpt or stopping:
                loss_bad, state_bad, stop_any = checked_step_flags(diverged, networks, stop, info)
                if loss_bad or state_bad:
                    raise TrainingError(_divergence_message(done, loss_bad, networks, last_good_step, last, cfg))
                stopping = stopping or (stop_any and info.enabled)
                is_ckpt = is_ckpt or stopping
            if is_log:
                elapsed = time.perf_counter() - window_start
                values = {k: float(all_reduce_mean(v.detach().float(), info)) for k, v in out.items()}
                values.update(
                    grad_norm=float(gnorm),
                    lr=float(lr_schedule[step]),
                    momentum=float(tau_schedule[step]),
                    epoch=done / sched.steps_per_epoch,
                    pairs_per_s=window_pairs / max(elapsed, 1e-9),
                    data_wait_fraction=data_wait / max(elapsed, 1e-9),
                )
                if device.type == "cuda":
                    values["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                log.log(done, values)
                summary = values
                window_start, window_pairs, data_wait = time.perf_counter(), 0, 0.0
                warning = collapse.update(done, values)
                if warning and info.is_main:
                    print(warning, file=sys.stderr, flush=True)
                if collapse.collapsed:
                    raise TrainingError(
                        f"the features collapsed: spread below {cfg.run.collapse_threshold} on {collapse.count} "
                        f"logged steps in a row since step {collapse.since}; stopping at step {done} without saving. "
                        f"{last} holds step {last_good_step}. Lower optim.lr (now {cfg.optim.lr:g}) or lengthen "
                        "optim.warmup_epochs; run.collapse_patience=0 only warns."
                    )
            if is_ckpt:
                save(done)
                last_good_step = done
            if stopping:
                announce_stop(stop, done, last, info)
                break
    finally:
        stop.restore()
        log.close()
    # `interrupted`: the signal that stopped the run early (None when it reached its stop step), so callers that go
    # on to evaluate (demo, study) can tell an unfinished model from a finished one.
    return {"step": step + 1, "checkpoint": str(last), "networks": networks, "interrupted": stop.signal, **summary}


def _divergence_message(done: int, loss_bad: bool, networks, last_good: int, last: Path, cfg: Config) -> str:
    if loss_bad:
        what = "loss or gradient norm"
    else:
        names, count = nonfinite_names(networks)
        shown = ", ".join(names) + (", ..." if count > len(names) else "")
        what = f"values in {count} parameter/buffer tensor(s) ({shown})"
    kept = f"{last} holds step {last_good} and is kept" if last_good > 0 else "nothing was saved"
    return (
        f"training diverged: non-finite {what} at or before step {done}; stopping without saving ({kept}). "
        f"Lower optim.lr (now {cfg.optim.lr:g}), lengthen optim.warmup_epochs, or check the data."
    )


def _complete_batch(batch: PairBatch, flow_estimator, device: torch.device, needs_flow: bool = True) -> PairBatch:
    frame_a = batch.frame_a.to(device, non_blocking=True)
    frame_b = batch.frame_b.to(device, non_blocking=True)
    if not needs_flow:
        return PairBatch(frame_a, frame_b)
    if batch.flow_ab is not None:
        return PairBatch(frame_a, frame_b, batch.flow_ab.to(device, non_blocking=True),
                         batch.flow_ba.to(device, non_blocking=True))  # fmt: skip
    if flow_estimator is None:
        raise TrainingError("the data has no flow and no flow estimator was given (set flow.source)")
    flow_ab, flow_ba = flow_estimator.bidirectional(frame_a, frame_b)
    return PairBatch(frame_a, frame_b, flow_ab, flow_ba)
