"""Roofline of one PooDLe training step, op by op, without the device: where the time must go on a GPU.

The step (EMA, `PooDLeObjective` forward + backward, AdamW) runs on FakeTensors, as in `poodle.engine.memory`,
under a dispatch mode that sees every aten op with its real shapes and dtypes. For each op that is not a view:

    flops   from torch.utils.flop_counter's registry (matmuls and convolutions; the rest count 0)
    bytes   every tensor it reads plus every tensor it writes, once (no cache reuse, no fusion)
    time    max(flops / matmul peak for its dtype, bytes / memory bandwidth)

The sum of the op times is a lower bound on the eager step (every op at its roofline, no launch gaps); the op
count times a launch cost estimates what CUDA graphs or fewer, fused kernels can save. MFU <= model FLOPs / (peak
x sum). Defaults are the H200 figures measured on this project's lent machines (device KINDS.md): 790 TFLOP/s
bf16 matmul and 4.3 TB/s device memory. fp32 convolutions run as TF32 (cuDNN's default) at half the bf16 peak;
fp32 matmuls (TF32 off by default) at 67 TFLOP/s, the H200's fp32 vector peak.

What it cannot see: cuDNN/cuBLAS efficiency below peak, caches (L2 reuse makes small ops cheaper than counted),
and what torch.compile fuses (it removes intermediate reads and writes; `elementwise_bytes` bounds that saving).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from poodle.config import Config
from poodle.engine.memory import build_step, run_step

__all__ = ["H200", "DeviceSpec", "OpCost", "StepRoofline", "dense_loss_roofline", "step_roofline"]


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    bf16_flops: float  # matmul/conv FLOP/s in bf16/fp16
    tf32_flops: float  # fp32 convolutions (cuDNN allows TF32 by default)
    fp32_flops: float  # fp32 matmuls (torch.backends.cuda.matmul.allow_tf32 is False by default)
    bandwidth: float  # bytes/s, reads + writes
    launch_s: float = 5e-6  # host cost of one eager kernel launch

    def op_flops_rate(self, dtype: torch.dtype, is_conv: bool) -> float:
        if dtype in (torch.bfloat16, torch.float16):
            return self.bf16_flops
        return self.tf32_flops if is_conv else self.fp32_flops


H200 = DeviceSpec("H200 (measured on lent machines)", 790e12, 395e12, 67e12, 4.3e12)


@dataclass
class OpCost:
    calls: int = 0
    flops: float = 0.0
    bytes: float = 0.0
    seconds: float = 0.0


@dataclass
class StepRoofline:
    pairs: int
    device: DeviceSpec
    ops: dict[str, OpCost] = field(default_factory=dict)

    @property
    def flops(self) -> float:
        return sum(c.flops for c in self.ops.values())

    @property
    def bytes(self) -> float:
        return sum(c.bytes for c in self.ops.values())

    @property
    def seconds(self) -> float:
        return sum(c.seconds for c in self.ops.values())

    @property
    def kernels(self) -> int:
        return sum(c.calls for c in self.ops.values())

    @property
    def matmul_seconds(self) -> float:
        """Time of the ops that do FLOPs (convolutions, matmuls), each at its own roofline."""
        return sum(c.seconds for c in self.ops.values() if c.flops)

    @property
    def elementwise_bytes(self) -> float:
        """Bytes moved by ops without FLOPs: what fusion (torch.compile, custom kernels) can cut."""
        return sum(c.bytes for c in self.ops.values() if not c.flops)

    def mfu_bound(self, model_flops: float | None = None) -> float:
        """MFU if every op ran at its roofline back to back: FLOPs / (bf16 peak x summed op time)."""
        return (model_flops or self.flops) / (self.device.bf16_flops * self.seconds)

    def top(self, k: int = 10) -> list[tuple[str, OpCost]]:
        return sorted(self.ops.items(), key=lambda kv: -kv[1].seconds)[:k]

    def summary(self) -> str:
        d = self.device
        lines = [
            f"roofline on {d.name}: {self.pairs} pairs, {self.kernels} kernels, {self.flops / 1e12:.2f} TFLOP, "
            f"{self.bytes / 1e9:.1f} GB moved",
            f"  sum of op times {1e3 * self.seconds:.1f} ms (matmul/conv ops {1e3 * self.matmul_seconds:.1f} ms, "
            f"the rest {1e3 * (self.seconds - self.matmul_seconds):.1f} ms = "
            f"{self.elementwise_bytes / 1e9:.1f} GB at {d.bandwidth / 1e12:.1f} TB/s)",
            f"  -> at most {self.pairs / self.seconds:.0f} pairs/s and {100 * self.mfu_bound():.0f} % MFU eager, "
            f"before launch gaps ({self.kernels} launches x {1e6 * d.launch_s:.0f} us = "
            f"{1e3 * self.kernels * d.launch_s:.1f} ms of host time)",
            "  heaviest ops (calls, GFLOP, GB, ms):",
        ]
        for name, c in self.top():
            lines.append(
                f"    {name:<45} {c.calls:6d} {c.flops / 1e9:10.1f} {c.bytes / 1e9:8.2f} {1e3 * c.seconds:8.2f}"
            )
        return "\n".join(lines)


_CONV = {"convolution", "convolution_backward", "_convolution", "cudnn_convolution"}


class _RooflineMode(TorchDispatchMode):
    def __init__(self, device: DeviceSpec):
        super().__init__()
        self.device = device
        self.ops: dict[str, OpCost] = defaultdict(OpCost)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if not outputs or func.is_view or func._overloadpacket.__name__ in ("detach", "lift_fresh", "alias"):
            return out  # metadata only (views, .device queries): no kernel, no bytes
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        tensors = inputs + outputs
        nbytes = float(sum(t.numel() * t.element_size() for t in tensors))
        flops = 0.0
        packet = func._overloadpacket
        if packet in flop_registry:
            flops = float(flop_registry[packet](*args, **kwargs, out_val=out))
        rate = self.device.op_flops_rate(tensors[0].dtype if tensors else torch.float32, packet.__name__ in _CONV)
        cost = self.ops[packet.__name__]
        cost.calls += 1
        cost.flops += flops
        cost.bytes += nbytes
        cost.seconds += max(flops / rate, nbytes / self.device.bandwidth)
        return out


def step_roofline(
    cfg: Config, pairs: int, device: DeviceSpec = H200, resolution: tuple[int, int] | None = None
) -> StepRoofline:
    """Op-by-op roofline of one training step (the second of two, so AdamW's state exists) on `device`."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    size = resolution or tuple(cfg.data.resolution)
    result = StepRoofline(pairs=pairs, device=device)
    fake_mode = FakeTensorMode()
    objective, optimizer = build_step(cfg, fake_mode)
    with fake_mode:
        run_step(objective, optimizer, pairs, size)  # the first step creates AdamW's state
        mode = _RooflineMode(device)
        with mode:
            run_step(objective, optimizer, pairs, size)
        result.ops = dict(mode.ops)
    return result


def dense_loss_roofline(
    cfg: Config, pairs: int, device: DeviceSpec = H200, resolution: tuple[int, int] | None = None
) -> StepRoofline:
    """The same roofline for `chunked_dense_loss` alone (forward + backward): stride-8 maps of the 2N images in
    the networks' dtype, warped and compared at full resolution, as the step calls it."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from poodle.data.augment import sample_dense_geometry
    from poodle.objective.dense import chunked_dense_loss, dense_loss_options

    h, w = resolution or cfg.data.resolution
    o, b = cfg.objective, 2 * pairs
    dtype = torch.bfloat16 if cfg.run.precision == "bf16" else torch.float32
    shape = (b, cfg.model.proj_out_dim, h // 8, w // 8)
    result = StepRoofline(pairs=pairs, device=device)
    with FakeTensorMode():
        online = torch.zeros(shape, dtype=dtype, requires_grad=True)
        target = torch.zeros(shape, dtype=dtype)
        flow = torch.zeros(b, 2, h, w)
        geometry = [sample_dense_geometry(b, (h, w), cfg.augment, torch.device("cpu"), None) for _ in range(2)]
        mode = _RooflineMode(device)
        with mode:
            loss, _ = chunked_dense_loss(online, target, flow, flow, geometry[0], geometry[1],
                                         **dense_loss_options(o))  # fmt: skip
            loss.backward()
        result.ops = dict(mode.ops)
    return result
