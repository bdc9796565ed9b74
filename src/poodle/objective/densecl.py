"""DenseCL (Wang et al., CVPR 2021) on frame pairs: MoCo-v2 global contrast plus dense contrast, both with queues.

Faithful to the authors' code (WXinlong/DenseCL @b64bbb6e: openselfsup/models/densecl.py, necks.py `DenseCLNeck`,
heads/contrastive_head.py):

- query encoder = ResNet + DenseCL neck; key encoder = its momentum copy (constant momentum 0.999, no schedule).
  The neck has a global branch (avg-pool -> Linear -> ReLU -> Linear, no BN) and a dense branch (1x1 conv -> ReLU
  -> 1x1 conv on layer4, at the backbone's own S = h x w grid) plus the spatial mean of the dense output.
- correspondence: for each query location i, j* = argmax_j cos(q_b[i], k_b[j]) on the L2-normalised layer4
  BACKBONE features; the dense positive is cos(q_grid[i], k_grid[j*]) on the projected dense features.
- negatives: the global queue holds global keys k; the dense queue `queue2` holds k2, the per-image MEAN of the key's
  dense projection (one vector per image). Both are enqueued after the loss, all-gathered across ranks.
- loss = (1 - lambda) * InfoNCE(global) + lambda * InfoNCE(dense), temperature 0.2, positive at index 0.

Shuffle BN: under torch.distributed the key batch is shuffled across ranks before the key forward and unshuffled
after (MoCo's `_batch_shuffle_ddp`), the permutation drawn from the step generator (exact resume). In a single
process there is nothing to shuffle across: BN sees the whole batch either way, so it is a no-op (as in MoCo, whose
shuffle needs DDP). Video adaptation: with `densecl.views=frames` the query view is cut from frame a and the key
view from frame b of the pair; `crops` cuts both from frame a (the image recipe).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from poodle.config import Config, ConfigError
from poodle.model.ema import EMANetworks
from poodle.model.encoder import ResNetEncoder
from poodle.objective.base import Method, feature_std
from poodle.objective.views import make_views, view_sources

__all__ = [
    "DenseCL",
    "DenseCLNeck",
    "DenseCLNetworks",
    "contrastive_loss",
    "dense_correspondence",
    "densecl_logits",
]


class DenseCLNeck(nn.Module):
    """DenseCL's neck on the layer4 map: (global (B, D), dense grid (B, D, h, w), mean of the grid (B, D)).

    Initialised as the release's `init_weights(init_linear='kaiming')`: Linear weights Kaiming-normal (fan_in,
    relu) with zero bias (mmcv's `kaiming_init`); the 1x1 convs keep PyTorch's default init (the release's
    `_init_weights` touches only Linear and norm layers).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))
        self.mlp2 = nn.Sequential(
            nn.Conv2d(in_dim, hidden_dim, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden_dim, out_dim, 1)
        )
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, c4: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        vec = self.mlp(c4.mean(dim=(2, 3)))
        grid = self.mlp2(c4)
        return vec, grid, grid.mean(dim=(2, 3))


class DenseCLNetworks(EMANetworks):
    """Online encoder + neck, their momentum copies under `target`, and the two key queues (registered buffers).

    `queue` (D, K) holds global keys, `queue2` (D, K) mean dense keys; both start as L2-normalised Gaussian noise
    (as the release). `queue_ptr` is the next column to overwrite (the release keeps two pointers that are always
    equal; one is kept here). `queue_count` counts the keys enqueued so far, capped at K (for the fill diagnostic).
    """

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        c = cfg.densecl
        self.encoder = ResNetEncoder(cfg.model.arch, dilated=cfg.model.dilated, init=cfg.model.init)
        self.decoder = None
        self.neck = DenseCLNeck(self.encoder.channels[-1], c.hidden_dim, c.out_dim)
        self._make_target(("encoder", "neck"))
        self.register_buffer("queue", F.normalize(torch.randn(c.out_dim, c.queue_size), dim=0))
        self.register_buffer("queue2", F.normalize(torch.randn(c.out_dim, c.queue_size), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self.register_buffer("queue_count", torch.zeros(1, dtype=torch.long))

    @property
    def queue_size(self) -> int:
        return self.queue.shape[1]

    @torch.no_grad()
    def enqueue(self, keys: Tensor, keys2: Tensor) -> None:
        """Write (N, D) global and mean-dense keys (all ranks' keys, gathered) at `queue_ptr` and advance it by N.

        The indices are computed on the device, so this never syncs with the host.
        """
        n, k = keys.shape[0], self.queue_size
        if k % n:
            raise ValueError(f"densecl.queue_size ({k}) must be divisible by the keys enqueued per step ({n})")
        cols = (self.queue_ptr + torch.arange(n, device=self.queue_ptr.device)) % k
        self.queue.index_copy_(1, cols, keys.detach().to(self.queue.dtype).t())
        self.queue2.index_copy_(1, cols, keys2.detach().to(self.queue2.dtype).t())
        self.queue_ptr.add_(n).remainder_(k)
        self.queue_count.add_(n).clamp_(max=k)


def dense_correspondence(q_b: Tensor, k_b: Tensor) -> Tensor:
    """(B, Sq) index j* of the most similar key location for each query location.

    q_b (B, C, Sq), k_b (B, C, Sk): L2-normalised (over C) backbone features, locations flattened row-major.
    """
    sim = torch.bmm(q_b.transpose(1, 2), k_b)  # (B, Sq, Sk) cosine similarities
    return sim.argmax(dim=2)


def densecl_logits(
    q: Tensor, k: Tensor, q_grid: Tensor, k_grid: Tensor, match: Tensor, queue: Tensor, queue2: Tensor
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """((pos (B, 1), neg (B, K)) global, (pos (B*S, 1), neg (B*S, K)) dense), all L2-normalised inputs.

    q, k (B, D); q_grid, k_grid (B, D, S); match (B, S) from `dense_correspondence`; queue, queue2 (D, K).
    """
    pos = (q * k).sum(dim=1, keepdim=True)
    neg = q @ queue
    matched = torch.gather(k_grid, 2, match.unsqueeze(1).expand(-1, k_grid.shape[1], -1))  # (B, D, S)
    pos_dense = (q_grid * matched).sum(dim=1).reshape(-1, 1)
    neg_dense = q_grid.transpose(1, 2).reshape(-1, q_grid.shape[1]) @ queue2
    return (pos, neg), (pos_dense, neg_dense)


def contrastive_loss(pos: Tensor, neg: Tensor, temperature: float) -> Tensor:
    """ContrastiveHead: cross-entropy of [pos, neg] / temperature with the positive at index 0, mean over rows.

    Computed as mean(logaddexp(pos, logsumexp(neg)) - pos) on the tempered logits, which is the same value without
    materialising the concatenated (N, 1 + K) logits and their log-softmax (at 512x1024 crops the dense rows are
    32 x 512 per GPU against K = 65536 columns, 4.3 GB per copy in fp32).
    """
    pos = pos.squeeze(1) / temperature
    return (torch.logaddexp(pos, torch.logsumexp(neg / temperature, dim=1)) - pos).mean()


# ------------------------------------------------------------------------------------------ torch.distributed


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@torch.no_grad()
def concat_all_gather(x: Tensor) -> Tensor:
    """All ranks' x concatenated along dim 0 in rank order (no gradient); x itself without torch.distributed."""
    if not _distributed():
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


@torch.no_grad()
def batch_shuffle(x: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor | None]:
    """MoCo's `_batch_shuffle_ddp`: this rank's share of a global permutation of the gathered batch.

    The permutation is drawn from `generator` and broadcast from rank 0. Returns (shuffled x, unshuffle index);
    without torch.distributed, (x, None): a single process has no cross-rank BN statistics to decorrelate.
    """
    if not _distributed():
        return x, None
    gathered = concat_all_gather(x)
    device = generator.device if generator is not None else x.device
    perm = torch.randperm(gathered.shape[0], generator=generator, device=device).to(x.device)
    dist.broadcast(perm, src=0)
    mine = perm.view(dist.get_world_size(), -1)[dist.get_rank()]
    return gathered[mine], torch.argsort(perm)


@torch.no_grad()
def batch_unshuffle(x: Tensor, unshuffle: Tensor | None) -> Tensor:
    """MoCo's `_batch_unshuffle_ddp`: undo `batch_shuffle` (identity when it was a no-op)."""
    if unshuffle is None:
        return x
    gathered = concat_all_gather(x)
    return gathered[unshuffle.view(dist.get_world_size(), -1)[dist.get_rank()]]


# ------------------------------------------------------------------------------------------ method


class DenseCL(Method):
    """DenseCL: MoCo-v2 global InfoNCE + dense InfoNCE on backbone-feature correspondences, momentum key encoder."""

    name = "densecl"
    needs_flow = False

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        k, b = cfg.densecl.queue_size, cfg.optim.batch_size
        if k % b:
            raise ConfigError(
                f"densecl.queue_size ({k}) must be divisible by optim.batch_size ({b}), the global number of keys "
                "enqueued per step (MoCo/DenseCL overwrite whole batches of queue columns)"
            )
        self.networks = DenseCLNetworks(cfg)

    @property
    def ema_momentum(self) -> float:
        return self.cfg.densecl.ema_momentum

    def momentum_schedule(self, total_steps: int) -> np.ndarray:
        """Constant momentum (MoCo/DenseCL have no schedule)."""
        return np.full(total_steps, self.ema_momentum, dtype=np.float64)

    def _key_features(self, images: Tensor, generator: torch.Generator | None) -> tuple[Tensor, ...]:
        """(k, k_grid, k2, k_b) of the momentum encoder, L2-normalised, fp32, no grad (shuffle BN under DDP)."""
        nets = self.networks
        with torch.no_grad():
            if self.cfg.densecl.shuffle_bn:
                images, unshuffle = batch_shuffle(images, generator)
            else:
                unshuffle = None
            with self._networks_precision(images.device):
                k_b = nets.target["encoder"](images)["layer4"]
                k, k_grid, k2 = nets.target["neck"](k_b)
            k, k2 = F.normalize(k.float(), dim=1), F.normalize(k2.float(), dim=1)
            k_grid, k_b = (F.normalize(t.float().flatten(2), dim=1) for t in (k_grid, k_b))
            return tuple(batch_unshuffle(t, unshuffle) for t in (k, k_grid, k2, k_b))

    def forward(self, batch, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        c, nets = self.cfg.densecl, self.networks
        src_q, src_k = view_sources(batch.frame_a, batch.frame_b, c.views)
        view_q = make_views(src_q, c.crop_size, c.crop_scale, c.crop_ratio, self.cfg.augment, c.blur_p[0],
                            c.solarize_p[0], generator)  # fmt: skip
        view_k = make_views(src_k, c.crop_size, c.crop_scale, c.crop_ratio, self.cfg.augment, c.blur_p[1],
                            c.solarize_p[1], generator)  # fmt: skip
        x_q, x_k = view_q.images, view_k.images
        if self.cfg.run.channels_last and x_q.device.type == "cuda":
            x_q = x_q.contiguous(memory_format=torch.channels_last)
            x_k = x_k.contiguous(memory_format=torch.channels_last)

        with self._networks_precision(x_q.device):
            q_b = nets.encoder(x_q)["layer4"]
            q, q_grid, _ = nets.neck(q_b)
        q = F.normalize(q.float(), dim=1)
        q_grid = F.normalize(q_grid.float().flatten(2), dim=1)
        q_b = F.normalize(q_b.detach().float().flatten(2), dim=1)  # only its argmax is used: no gradient
        k, k_grid, k2, k_b = self._key_features(x_k, generator)

        match = dense_correspondence(q_b, k_b)
        queue, queue2 = nets.queue.clone(), nets.queue2.clone()  # snapshots: the enqueue below is in place
        (pos, neg), (pos_d, neg_d) = densecl_logits(q, k, q_grid, k_grid, match, queue, queue2)
        loss_global = contrastive_loss(pos, neg, c.temperature)
        loss_dense = contrastive_loss(pos_d, neg_d, c.temperature)
        del neg, neg_d  # (N, K) and (N * S, K): not needed by the backward
        nets.enqueue(concat_all_gather(k), concat_all_gather(k2))
        return {
            "loss": (1.0 - c.loss_lambda) * loss_global + c.loss_lambda * loss_dense,
            "densecl_global": loss_global.detach(),
            "densecl_dense": loss_dense.detach(),
            "densecl_std": feature_std(q),
            "densecl_pos_global": pos.detach().mean(),
            "densecl_pos_dense": pos_d.detach().mean(),
            "densecl_queue_fill": nets.queue_count.float().squeeze(0) / nets.queue_size,
        }
