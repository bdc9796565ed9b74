"""DINO with a ResNet trunk on frame pairs: multi-crop self-distillation with centring.

Faithful to facebookresearch/dino `main_dino.py` (DINOLoss, multi-crop) and `vision_transformer.py` (DINOHead)
at 7c446df5:

    student  s = h(avgpool(layer4(f(x))))  for the 2 global crops and the local crops
    teacher  t = h'(avgpool(layer4(f'(x)))) for the 2 global crops only   (f', h' EMA copies of f, h)
    L = 1/|P| sum_{(i, v) in P} mean_n [ -softmax((t_i - c) / T_t) . log_softmax(s_v / T_s) ]
    P = {(i, v): i in {0, 1} global teacher views, v any student view, v != i}   (2 V - 2 terms for V views)
    c <- m c + (1 - m) mean_n t   (after the loss; all-reduced over ranks as DINO does)

h is DINOHead: Linear-GELU-Linear-GELU-Linear (in -> hidden -> hidden -> bottleneck, BatchNorm1d after the first
two Linears only with `use_bn_in_head`), L2 normalisation, then a weight-normalised Linear bottleneck -> out_dim
without bias whose norm (`weight_g`) is fixed at 1 with `norm_last_layer`. The weight norm is
`torch.nn.utils.parametrizations.weight_norm`, so the state dict holds plain tensors
(`last_layer.parametrizations.weight.original0` = DINO's `weight_g`, `original1` = `weight_v`).

Video adaptation (`dino.views`): with `frames` global crop 1 is cut from frame a and global crop 2 from frame b of
each pair; the local crops are split between the two frames, the first ceil(L/2) from frame a. With `crops` every
view comes from frame a (the image recipe). As DINO's MultiCropWrapper, the trunk runs once on the concatenated
global crops and once on the concatenated local crops (BatchNorm sees one resolution at a time), and the head runs
once on all of them.

Step-dependent state, all in registered buffers of the networks (so checkpoints carry them and resume is exact):
`center` (1, out_dim) and `teacher_temp` (the temperature the next forward uses). The engine does not pass the
step to `forward`; it passes it to `after_backward(step, steps_per_epoch)`, which therefore (1) drops the last
layer's gradients while `step < freeze_last_layer_epochs * steps_per_epoch` (DINO's cancel_gradients_last_layer)
and (2) writes the teacher temperature of step + 1 into `teacher_temp`. Step 0 needs no `steps_per_epoch`: it is
`warmup_teacher_temp` (or `teacher_temp` without warm-up) whatever the epoch length. The engine's step index is
used rather than a count of forward calls, which would drift if forward ran outside training steps. The centre is
updated only in training mode.

Precision: under `run.precision=bf16` the trunk and the MLP run in bf16 autocast (DINO uses fp16 with a loss
scaler); the L2 normalisation, the last layer, the loss and the centre are fp32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from poodle.config import Config, DinoConfig
from poodle.model.ema import EMANetworks
from poodle.model.encoder import ResNetEncoder
from poodle.objective.base import Method, feature_std
from poodle.objective.views import make_views, view_sources


class DINOHead(nn.Module):
    """DINO's projection head: MLP -> L2 normalise -> weight-normalised Linear (bottleneck -> out_dim, no bias)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        use_bn: bool = False,
        norm_last_layer: bool = True,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
        if use_bn:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers += [nn.GELU(), nn.Linear(hidden_dim, hidden_dim)]
        if use_bn:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers += [nn.GELU(), nn.Linear(hidden_dim, bottleneck_dim)]
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():  # DINO's _init_weights, applied before the last layer exists
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # nn.Linear's default init, then g = 1 (DINO: weight_g.data.fill_(1); frozen with norm_last_layer).
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False), dim=0)
        g = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            g.fill_(1.0)
        if norm_last_layer:
            g.requires_grad_(False)

    def project(self, x: Tensor) -> Tensor:
        """(N, in_dim) -> (N, bottleneck_dim) L2-normalised bottleneck features (the last layer's input), fp32."""
        return F.normalize(self.mlp(x).float(), dim=-1, p=2)

    def logits(self, z: Tensor) -> Tensor:
        """The weight-normalised last layer, always in fp32: its outputs lie in [-1, 1] and are divided by a
        temperature of 0.04, so bf16 rounding (2^-8 near 1) would shift the teacher's logits by ~0.1."""
        with torch.autocast(z.device.type, enabled=False):
            return self.last_layer(z.float())

    def forward(self, x: Tensor) -> Tensor:
        return self.logits(self.project(x))


class DinoNetworks(EMANetworks):
    """Student encoder + DINOHead; the teacher holds EMA copies of both. Buffers: `center`, `teacher_temp`."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        m, d = cfg.model, cfg.dino
        self.encoder = ResNetEncoder(m.arch, dilated=m.dilated, init=m.init)
        self.decoder = None
        self.head = DINOHead(self.encoder.channels[-1], d.out_dim, use_bn=d.use_bn_in_head,
                             norm_last_layer=d.norm_last_layer, hidden_dim=d.hidden_dim,
                             bottleneck_dim=d.bottleneck_dim)  # fmt: skip
        self._make_target(("encoder", "head"))
        self.register_buffer("center", torch.zeros(1, d.out_dim))
        self.register_buffer("teacher_temp", torch.tensor(teacher_temperature(d, 0, 1.0), dtype=torch.float32))

    def teacher_logits(self, x: Tensor) -> Tensor:
        return self.target["head"](self.target["encoder"].forward_pooled(x))


# ----------------------------------------------------------------------------------------------- pieces


def teacher_temperature(cfg: DinoConfig, step: int, steps_per_epoch: float) -> float:
    """Teacher temperature at training step `step` (0-based).

    `step` schedule: linear from `warmup_teacher_temp` at step 0 to `teacher_temp` at step
    `warmup_teacher_temp_epochs * steps_per_epoch`, constant after. `epoch` schedule: DINO's
    `np.linspace(warmup, final, E)[epoch]` for epoch = floor(step / steps_per_epoch) < E = int(warm-up epochs),
    `teacher_temp` after.
    """
    a, b = cfg.warmup_teacher_temp, cfg.teacher_temp
    if cfg.teacher_temp_schedule == "epoch":
        n = int(cfg.warmup_teacher_temp_epochs)
        epoch = math.floor(step / steps_per_epoch)
        if epoch >= n:
            return b
        return a if n == 1 else a + (b - a) * epoch / (n - 1)
    warm = cfg.warmup_teacher_temp_epochs * steps_per_epoch
    if step >= warm:
        return b
    return a + (b - a) * step / warm


def cross_view_pairs(n_crops: int) -> list[tuple[int, int]]:
    """(teacher view iq, student view v) pairs of DINOLoss: iq in the 2 globals, every v != iq."""
    return [(iq, v) for iq in range(2) for v in range(n_crops) if v != iq]


def dino_loss(
    student: Tensor, teacher: Tensor, center: Tensor, teacher_temp: Tensor | float, student_temp: float, n_crops: int
) -> tuple[Tensor, Tensor]:
    """DINOLoss.forward without the centre update: (loss, mean teacher entropy).

    `student` (n_crops * N, K) and `teacher` (2 * N, K) logits, views stacked in blocks of N (DINO's `chunk`).
    The loss is the mean over the 2 n_crops - 2 cross-entropy terms, each averaged over the batch.
    """
    k = student.shape[-1]
    n = teacher.shape[0] // 2
    log_p = F.log_softmax(student.float() / student_temp, dim=-1).view(n_crops, n, k)
    with torch.no_grad():
        t_logits = (teacher.float() - center) / teacher_temp
        q = F.softmax(t_logits, dim=-1).view(2, n, k)
        entropy = -(q * F.log_softmax(t_logits, dim=-1).view(2, n, k)).sum(-1).mean()
    ce = -torch.einsum("ink,vnk->iv", q, log_p) / n  # (2, n_crops): batch-mean cross-entropy of every pair
    mask = torch.ones(2, n_crops, device=ce.device, dtype=ce.dtype)
    mask[0, 0] = 0.0
    mask[1, 1] = 0.0
    return (ce * mask).sum() / mask.sum(), entropy


@torch.no_grad()
def update_center(center: Tensor, teacher: Tensor, momentum: float) -> None:
    """In place: center <- center * m + mean(teacher over the batch, all ranks) * (1 - m) (DINOLoss.update_center)."""
    batch_center = teacher.float().sum(dim=0, keepdim=True)
    count = teacher.shape[0]
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(batch_center)
        count *= torch.distributed.get_world_size()
    center.copy_(center * momentum + batch_center / count * (1 - momentum))


# ----------------------------------------------------------------------------------------------- method


class DINO(Method):
    """DINO (ResNet trunk): global crops from frames a and b (`dino.views=frames`) or from frame a alone."""

    name = "dino"
    needs_flow = False

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.networks = DinoNetworks(cfg)

    @property
    def ema_momentum(self) -> float:
        return self.cfg.dino.ema_momentum

    @property
    def n_crops(self) -> int:
        return 2 + self.cfg.dino.local_crops

    def views(self, batch, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor | None]:
        """(global crops (2N, 3, gh, gw): crop 1 of every pair then crop 2, local crops (L N, 3, lh, lw) or None)."""
        d, aug = self.cfg.dino, self.cfg.augment
        src_a, src_b = view_sources(batch.frame_a, batch.frame_b, d.views)
        glob = dict(size=tuple(d.global_size), scale=tuple(d.global_scale), ratio=tuple(d.crop_ratio), augment=aug)
        g1 = make_views(src_a, blur_p=d.blur_p[0], solarize_p=d.solarize_p[0], generator=generator, **glob)
        g2 = make_views(src_b, blur_p=d.blur_p[1], solarize_p=d.solarize_p[1], generator=generator, **glob)
        globals_ = torch.cat([g1.images, g2.images])
        if d.local_crops == 0:
            return globals_, None
        from_a = (d.local_crops + 1) // 2
        sources = torch.cat([src_a] * from_a + [src_b] * (d.local_crops - from_a))  # local crop j = block j
        locals_ = make_views(sources, tuple(d.local_size), tuple(d.local_scale), tuple(d.crop_ratio), aug,
                             blur_p=d.blur_p[2], solarize_p=d.solarize_p[2], generator=generator)  # fmt: skip
        return globals_, locals_.images

    def forward(self, batch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        d, nets = self.cfg.dino, self.networks
        globals_, locals_ = self.views(batch, generator)
        if self.cfg.run.channels_last and globals_.device.type == "cuda":
            globals_ = globals_.contiguous(memory_format=torch.channels_last)
            locals_ = None if locals_ is None else locals_.contiguous(memory_format=torch.channels_last)
        autocast = self._networks_precision(globals_.device)
        with torch.no_grad(), autocast:
            teacher = nets.teacher_logits(globals_)
        with autocast:
            pooled = [nets.encoder.forward_pooled(globals_)]  # one trunk pass per resolution (MultiCropWrapper)
            if locals_ is not None:
                pooled.append(nets.encoder.forward_pooled(locals_))
            z = nets.head.project(torch.cat(pooled))
            student = nets.head.logits(z)
        temp = nets.teacher_temp.detach().clone()
        loss, entropy = dino_loss(student, teacher.detach(), nets.center, temp, d.student_temp, self.n_crops)
        if self.training:
            update_center(nets.center, teacher.detach(), d.center_momentum)
        return {
            "loss": loss,
            "dino": loss.detach(),
            "dino_std": feature_std(z),
            "dino_teacher_entropy": entropy,
            "dino_kl": loss.detach() - entropy,  # each teacher view is in the same number of terms
            "dino_teacher_temp": temp,
        }

    def after_backward(self, step: int, steps_per_epoch: float) -> None:
        """Drop the last layer's gradients in the first `freeze_last_layer_epochs` epochs; set the teacher
        temperature of the next step."""
        d = self.cfg.dino
        if step < d.freeze_last_layer_epochs * steps_per_epoch:
            for p in self.networks.head.last_layer.parameters():
                p.grad = None
        self.networks.teacher_temp.fill_(teacher_temperature(d, step + 1, steps_per_epoch))


__all__ = ["DINO", "DINOHead", "DinoNetworks", "cross_view_pairs", "dino_loss", "teacher_temperature", "update_center"]
