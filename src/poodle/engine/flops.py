"""Analytic FLOP model of one PooDLe training step, per frame pair.

Only convolutions, linears and matmuls are counted, as multiply-adds x 2 (bias adds, BatchNorm, ReLU, pooling,
upsampling, grid_sample, roi_align, the dense loss and the optimiser/EMA updates are elementwise and ignored; at
512x1024 they are well under 1 % of the conv work but dominate memory traffic, see docs/performance.md).
This is the same convention as `torch.utils.flop_counter.FlopCounterMode`, which tests/test_flops.py checks the
model against.

Per-layer counts come from the real modules: `PooDLeNetworks` is built on the meta device (no memory, no init
cost) and every Conv2d/Linear reports 2 * out_numel * (in_channels / groups) * kh * kw from a forward hook, so
the model follows any config change (arch, dilation, SDM switches, head widths, resolution, K, subcrop size).

Step composition, for N pairs (2N images per branch: both temporal orderings):
    online dense     2 images x 3 x (encoder + SDM)            forward + backward (backward = 2 x forward:
    online heads     2 images x 3 x (projector + predictor)    grad-input + grad-weight), except the first conv,
    online subcrops  2K crops x 3 x encoder(crop)              whose input (the image) needs no gradient:
    online p. heads  2K crops x 3 x (projector + predictor)    its backward is 1 x forward
    target dense     2 images x (encoder + SDM)                forward only (no_grad)
    target heads     2 images x dense projector
    target subcrops  2K crops x encoder(crop)
    target p. heads  2K crops x pooled projector
    crops            4K crops cut and resized: resized_crop's two weight matmuls (0 with subcrops.crop_mode=roi_align)
    augment          2 images x separable Gaussian blur (grouped conv; applied to all, selected per image)
    flow             not counted: the harness uses cached flow; RAFT would come on top (`flow_gflops`)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from poodle.config import Config
from poodle.data.augment import blur_kernel_sides
from poodle.data.subcrops import crop_flops

__all__ = ["StepFlops", "encoder_gflops", "module_flops", "raft_gflops", "step_flops"]


@dataclass(frozen=True)
class ModuleFlops:
    """Forward FLOPs of one module call, and the part whose input needs no gradient (no grad-input in bwd)."""

    forward: float
    no_input_grad: float = 0.0

    @property
    def train(self) -> float:
        """Forward + backward: 3 x forward, minus the grad-input of layers fed by a non-differentiable input."""
        return 3.0 * self.forward - self.no_input_grad

    def __add__(self, other: ModuleFlops) -> ModuleFlops:
        return ModuleFlops(self.forward + other.forward, self.no_input_grad + other.no_input_grad)

    def __mul__(self, k: float) -> ModuleFlops:
        return ModuleFlops(self.forward * k, self.no_input_grad * k)

    __rmul__ = __mul__


def _layer_flops(module: nn.Module, out: torch.Tensor) -> float:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return 2.0 * out.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return 2.0 * out.numel() * module.in_features
    return 0.0


def module_flops(module: nn.Module, *inputs: object) -> tuple[ModuleFlops, object]:
    """Run `module(*inputs)` (meta tensors are fine) and count its conv/linear FLOPs with forward hooks.

    A layer counts as `no_input_grad` when its input tensor does not require grad (the first encoder conv on
    raw images); the caller sets requires_grad on inputs that carry a gradient in the real step.
    Returns (flops, module output).
    """
    total = [0.0, 0.0]

    def hook(mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
        f = _layer_flops(mod, out)
        total[0] += f
        if f and not args[0].requires_grad:
            total[1] += f

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        out = module(*inputs)
    finally:
        for h in handles:
            h.remove()
    return ModuleFlops(total[0], total[1]), out


@dataclass(frozen=True)
class StepFlops:
    """FLOPs of one training step per frame pair, by part (see module docstring); all in FLOPs (not G)."""

    online_dense: float  # encoder + SDM on full frames, fwd + bwd
    online_dense_heads: float  # dense projector + predictor at stride 8, fwd + bwd
    target_dense: float  # EMA encoder + SDM on full frames, fwd
    target_dense_heads: float  # EMA dense projector, fwd
    online_subcrops: float  # encoder on 2K subcrops, fwd + bwd
    online_pooled_heads: float  # pooled projector + predictor, fwd + bwd
    target_subcrops: float  # EMA encoder on 2K subcrops, fwd
    target_pooled_heads: float  # EMA pooled projector, fwd
    subcrop_crops: float  # cutting the 4K online + target crops (resized_crop's weight matmuls)
    augment: float  # photometric blur (grouped conv)
    flow: float = 0.0  # not counted unless given (cached flow in the harness)

    @property
    def total(self) -> float:
        return sum(getattr(self, f.name) for f in dataclasses.fields(self))

    def rows(self) -> list[tuple[str, float]]:
        return [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)] + [("total", self.total)]


def _meta_networks(cfg: Config):
    from poodle.model import PooDLeNetworks  # local: keeps `import poodle.engine` light

    model_cfg = dataclasses.replace(cfg.model, init="random")  # never read weight files for a count
    with torch.device("meta"):
        return PooDLeNetworks(model_cfg, dense=cfg.objective.dense, pooled=cfg.objective.pooled)


def _image(h: int, w: int, batch: int = 1) -> torch.Tensor:
    return torch.empty(batch, 3, h, w, device="meta")


def _grad(x: torch.Tensor) -> torch.Tensor:
    return x.detach().requires_grad_(True)


def step_flops(cfg: Config, resolution: tuple[int, int] | None = None, flow_gflops: float = 0.0) -> StepFlops:
    """FLOPs per frame pair of one PooDLe step under `cfg` (see the module docstring for the composition).

    `flow_gflops` (per pair, both directions) is added as the `flow` part when the flow is computed in the
    step; the default 0 matches cached flow. The count does not depend on the number of pairs (BatchNorm
    aside, every op is per image), so per-step FLOPs = pairs x total.
    """
    nets = _meta_networks(cfg)
    h, w = resolution or cfg.data.resolution
    k, s = cfg.subcrops.num, cfg.subcrops.size
    zero = ModuleFlops(0.0)
    enc = dec = dproj = dpred = crop_enc = pproj = ppred = zero
    if cfg.objective.dense:
        enc, feats = module_flops(nets.encoder, _image(h, w))
        dec, z = module_flops(nets.decoder, {key: _grad(v) for key, v in feats.items()})
        dproj, p = module_flops(nets.dense_projector, _grad(z))
        dpred, _ = module_flops(nets.dense_predictor, _grad(p))
    if cfg.objective.pooled:
        crop_enc, feats = module_flops(nets.encoder, _image(s, s, batch=2))  # batch 2: BN needs >1 in train
        crop_enc = crop_enc * 0.5
        vec = _grad(feats["layer4"].mean(dim=(2, 3)))
        pproj, p = module_flops(nets.pooled_projector, vec)
        pproj = pproj * 0.5
        ppred, _ = module_flops(nets.pooled_predictor, _grad(p))
        ppred = ppred * 0.5
    kh, kw = blur_kernel_sides(h, w, cfg.augment)  # fixed 51 x 51 for the release's FlowE
    blur = 2.0 * 3 * h * w * ((kh if kh > 1 else 0) + (kw if kw > 1 else 0)) if cfg.augment.blur_p > 0 else 0.0
    images, crops = 2, 2 * k  # per pair: both orderings
    return StepFlops(
        online_dense=images * (enc + dec).train,
        online_dense_heads=images * (dproj + dpred).train,
        target_dense=images * (enc + dec).forward,
        target_dense_heads=images * dproj.forward,
        online_subcrops=crops * crop_enc.train,
        online_pooled_heads=crops * (pproj + ppred).train,
        target_subcrops=crops * crop_enc.forward,
        target_pooled_heads=crops * pproj.forward,
        subcrop_crops=crop_flops(2 * crops, 3, (h, w), s, cfg.subcrops.crop_mode) if cfg.objective.pooled else 0.0,
        augment=images * blur,
        flow=flow_gflops * 1e9,
    )


def encoder_gflops(arch: str = "resnet50", resolution: tuple[int, int] = (512, 1024), sdm: bool = False) -> float:
    """Forward GFLOPs (2 x MACs) of the encoder (+ SDM) on one image: the paper's App. I comparison."""
    from poodle.model import ResNetEncoder, SpatialDecoder

    with torch.device("meta"):
        encoder = ResNetEncoder(arch)
        decoder = SpatialDecoder(encoder.channels) if sdm else None
    flops, feats = module_flops(encoder, _image(*resolution))
    if decoder is not None:
        flops = flops + module_flops(decoder, feats)[0]
    return flops.forward / 1e9


def raft_gflops(resolution: tuple[int, int] = (512, 1024), iters: int = 24, shared: bool = False) -> float:
    """GFLOPs of RAFT-large's flow for one pair in both directions, counted by FlopCounterMode on the meta device.

    shared=False is the release's call (2 pairs [a; b] -> [b; a]: every frame encoded twice, two correlation
    volumes); shared=True is `RaftFlow.bidirectional` (each frame encoded once). Only the last iteration is
    convex-upsampled (what `RaftFlow` runs). The correlation volume is a matmul, so it is counted.
    """
    from torch.utils.flop_counter import FlopCounterMode

    from poodle.data.optical_flow import RAFT_MIN_SIDE, RaftFlow, _raft_final_flow

    h, w = (max(RAFT_MIN_SIDE, side + (-side) % 8) for side in resolution)  # RaftFlow's padding
    with torch.device("meta"):
        raft = RaftFlow("large", weights=None, iters=iters)
        x = torch.zeros(2 if shared else 4, 3, h, w)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        _raft_final_flow(raft.raft, x, iters, shared)
    return counter.get_total_flops() / 1e9
