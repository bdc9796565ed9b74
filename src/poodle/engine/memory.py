"""Predicted peak memory of one PooDLe training step, without the device.

The step (EMA update, `PooDLeObjective` forward + backward, AdamW) runs under `FakeTensorMode`: every tensor has
its real shape and dtype but no storage, so a 512x1024 ResNet-50 step at 8 pairs costs a minute of CPU and no
memory. PyTorch's `MemTracker` (torch.distributed._tools.mem_tracker) follows every storage as it is created and
freed and reports the peak, split into parameters, buffers, gradients, activations (saved for backward),
temporaries and optimizer state. Two steps run, so AdamW's state is in the peak.

What this predicts, and what it leaves out:
- Autocast: `run.precision=bf16` is emulated with CPU autocast (`autocast_device_types`), whose bf16 op list is
  close to, but not the same as, CUDA's; fp32 predicts the fp32 step exactly.
- Not counted: the CUDA context (~0.5 GiB per process), cuDNN/cuBLAS workspaces, the caching allocator's rounding
  and fragmentation, and NCCL buffers under DDP. `torch.cuda.max_memory_allocated` on a real device includes
  the allocator rounding (not the context); `benchmarks/train_step.py --predict-memory` prints both side by side.
- Only the `ours` path (PooDLeObjective): the release-style reference reads boxes back to the host (`.tolist()`),
  which a tensor without data cannot do.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from poodle.config import Config
from poodle.engine.optim import build_optimizer
from poodle.objective import PairBatch, PooDLeObjective

__all__ = ["StepMemory", "build_step", "run_step", "step_memory"]

# MemTracker's reference types (_MemRefType values) -> our names
CATEGORIES = {"Parameter": "parameters", "Buffer": "buffers", "Gradient": "gradients", "Activation": "activations",
              "Temp": "temporaries", "Optstate": "optimizer", "Other": "other"}  # fmt: skip


@dataclass(frozen=True)
class StepMemory:
    """Bytes held at the step's peak, by category (their sum is `peak`)."""

    pairs: int
    precision: str
    by_category: dict[str, int]

    @property
    def peak(self) -> int:
        return sum(self.by_category.values())

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v / 2**30:.2f}" for k, v in self.by_category.items() if v)
        return f"predicted peak {self.peak / 2**30:.2f} GiB at {self.pairs} pairs, {self.precision} ({parts} GiB)"


def _fake_parameters(module: nn.Module) -> None:
    """Replace every parameter and buffer by an uninitialised tensor of the same shape (fake under FakeTensorMode):
    meta tensors, which the objective is built with, cannot be autocast; fake ones can."""
    for mod in module.modules():
        for name, p in mod._parameters.items():
            if p is not None:
                mod._parameters[name] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype), p.requires_grad)
        for name, b in mod._buffers.items():
            if b is not None:
                mod._buffers[name] = torch.zeros(b.shape, dtype=b.dtype)


def build_step(cfg: Config, fake_mode=None) -> tuple[PooDLeObjective, torch.optim.Optimizer]:
    """The objective and its AdamW for a step without data; with a `FakeTensorMode`, all parameters are fake.

    The fake objective is built on the meta device (outside the mode: FakeTensorMode cannot deep-copy the online
    modules into the EMA target) and then given fresh fake parameters inside it. `run.precision=bf16` turns on
    autocast for the (fake) CPU tensors, as the CUDA step has it. Shared with `poodle.engine.roofline`.
    """
    with torch.device("meta" if fake_mode is not None else "cpu"):
        objective = PooDLeObjective(cfg)
    objective.autocast_device_types = ("cuda", "cpu")
    with fake_mode if fake_mode is not None else contextlib.nullcontext():
        if fake_mode is not None:
            _fake_parameters(objective)
        optimizer = build_optimizer(objective.networks, cfg.optim)
    return objective, optimizer


def run_step(objective: PooDLeObjective, optimizer: torch.optim.Optimizer, pairs: int, size: tuple[int, int]) -> None:
    """One training step on zero frames (uint8, as the loader delivers them) and zero fp16 flow."""
    h, w = size
    frames = torch.zeros(2, pairs, 3, h, w, dtype=torch.uint8)
    flow = torch.zeros(2, pairs, 2, h, w, dtype=torch.float16)
    objective.networks.update_target(0.996)
    out = objective(PairBatch(frames[0], frames[1], flow[0], flow[1]))
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    optimizer.step()


def step_memory(cfg: Config, pairs: int, resolution: tuple[int, int] | None = None, *, fake: bool = True) -> StepMemory:
    """Peak memory of a training step with `pairs` frame pairs at the config's resolution and precision.

    `fake=False` runs the same step on real CPU tensors (zeros as data): slow at full size, used by the tests to
    check that the fake step allocates what the real one does.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    size = resolution or tuple(cfg.data.resolution)
    fake_mode = FakeTensorMode() if fake else None
    objective, optimizer = build_step(cfg, fake_mode)
    with fake_mode if fake else contextlib.nullcontext():
        # MemTracker hooks the gradient of every parameter it sees, frozen ones included, and a frozen tensor
        # refuses hooks. The target only runs under no_grad and is not in the optimizer, so this changes nothing.
        objective.networks.target.requires_grad_(True)
        tracker = MemTracker()
        tracker.track_external(objective, optimizer)
        with tracker:
            for _ in range(2):
                run_step(objective, optimizer, pairs, size)
                # The root module may not run twice in one tracking round. The peak spans both steps; the second
                # is the larger (AdamW's state exists by then).
                tracker.reset_mod_stats()
        peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
    by_category = {name: 0 for name in CATEGORIES.values()}
    for key, value in peak.items():
        if key != "Total":
            by_category[CATEGORIES[key.value]] = int(value)
    return StepMemory(pairs=pairs, precision=cfg.run.precision, by_category=by_category)
