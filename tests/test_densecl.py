"""DenseCL: correspondence, queues, loss values, gradient flow, constant momentum, engine resume, export."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from poodle.config import ConfigError, load_config
from poodle.objective import PairBatch, build_method
from poodle.objective.densecl import (
    DenseCL,
    batch_shuffle,
    batch_unshuffle,
    concat_all_gather,
    contrastive_loss,
    dense_correspondence,
    densecl_logits,
)

TINY = [
    "optim.batch_size=4",
    "densecl.queue_size=16",
    "densecl.hidden_dim=32",
    "densecl.out_dim=16",
    "densecl.crop_size=[32,64]",
    "data.workers=0",
    "run.log_every=1",
    "run.ckpt_every=2",
    "run.precision=fp32",
]


def _cfg(*overrides: str):
    return load_config("densecl_synthdrive", [*TINY, *overrides])


def _batch(n: int = 4, seed: int = 0) -> PairBatch:
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (2, n, 3, 64, 128), generator=g, dtype=torch.uint8)
    return PairBatch(frames[0], frames[1])


def test_correspondence_recovers_a_known_translation():
    # A random feature field; the key view sees it shifted by (dy, dx) whole cells.
    torch.manual_seed(0)
    b, c, h, w, dy, dx = 2, 64, 5, 7, 2, 3
    field = F.normalize(torch.randn(b, c, h + dy, w + dx), dim=1)
    q_map = field[:, :, dy:, dx:]  # query location (y, x) = field (y + dy, x + dx)
    k_map = field[:, :, :h, :w]  # key location (y, x) = field (y, x)
    match = dense_correspondence(q_map.flatten(2), k_map.flatten(2))
    assert match.shape == (b, h * w)
    for y in range(h - dy):
        for x in range(w - dx):
            assert (match[:, y * w + x] == (y + dy) * w + (x + dx)).all()
    # Identical views: every location matches itself.
    same = dense_correspondence(q_map.flatten(2), q_map.flatten(2))
    assert (same == torch.arange(h * w)).all()


def test_dense_positive_uses_the_matched_projected_location():
    # Backbone features pick the match; the positive logit is taken on the projected grid at that match.
    b, d, s = 1, 4, 3
    q_b = torch.eye(3).unsqueeze(0)  # (1, C=3, S=3): query location i is basis vector e_i
    k_b = torch.eye(3)[:, [2, 0, 1]].unsqueeze(0)  # key location j is e_{perm[j]} with perm = [2, 0, 1]
    match = dense_correspondence(q_b, k_b)
    assert match.tolist() == [[1, 2, 0]]
    q_grid = F.normalize(torch.randn(b, d, s), dim=1)
    k_grid = F.normalize(torch.randn(b, d, s), dim=1)
    q = F.normalize(torch.randn(b, d), dim=1)
    queue = F.normalize(torch.randn(d, 5), dim=0)
    (_, _), (pos_d, neg_d) = densecl_logits(q, q, q_grid, k_grid, match, queue, queue)
    expected = torch.stack([(q_grid[0, :, i] * k_grid[0, :, match[0, i]]).sum() for i in range(s)])
    assert torch.allclose(pos_d.view(-1), expected)
    assert neg_d.shape == (s, 5)
    assert torch.allclose(neg_d, q_grid[0].t() @ queue)


def test_contrastive_loss_matches_a_hand_computed_value():
    tau = 0.2
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[0.6, 0.8]])
    queue = torch.tensor([[0.0, -1.0], [1.0, 0.0]])  # columns (0, 1) and (-1, 0)
    grid = q.unsqueeze(-1)  # one location
    (pos, neg), _ = densecl_logits(q, k, grid, grid, torch.zeros(1, 1, dtype=torch.long), queue, queue)
    assert torch.allclose(pos, torch.tensor([[0.6]])) and torch.allclose(neg, torch.tensor([[0.0, -1.0]]))
    expected = -0.6 / tau + math.log(math.exp(0.6 / tau) + math.exp(0.0) + math.exp(-1.0 / tau))
    assert contrastive_loss(pos, neg, tau).item() == pytest.approx(expected, abs=1e-6)
    # ... and equals ContrastiveHead's cross-entropy of cat([pos, neg]) / tau with label 0 on random rows.
    p, n = torch.rand(6, 1) * 2 - 1, torch.rand(6, 9) * 2 - 1
    head = F.cross_entropy(torch.cat([p, n], dim=1) / tau, torch.zeros(6, dtype=torch.long))
    assert torch.allclose(contrastive_loss(p, n, tau), head, atol=1e-6)
    # The loss is minimal when the positive is the query itself (cos 1: identical views).
    assert contrastive_loss(torch.ones(1, 1), neg, tau) < contrastive_loss(pos, neg, tau)


def test_enqueue_advances_the_pointer_and_writes_the_newest_keys():
    torch.manual_seed(0)
    nets = build_method(_cfg("densecl.queue_size=12", "optim.batch_size=4")).networks
    k_size, n = 12, 4
    assert torch.allclose(nets.queue.norm(dim=0), torch.ones(k_size))  # L2-normalised random init
    for step in range(5):
        keys, keys2 = torch.randn(n, 16), torch.randn(n, 16)
        ptr = int(nets.queue_ptr)
        nets.enqueue(keys, keys2)
        cols = [(ptr + i) % k_size for i in range(n)]
        assert torch.equal(nets.queue[:, cols], keys.t()) and torch.equal(nets.queue2[:, cols], keys2.t())
        assert int(nets.queue_ptr) == (step + 1) * n % k_size
    assert int(nets.queue_count) == k_size
    with pytest.raises(ValueError, match="divisible"):
        nets.enqueue(torch.randn(5, 16), torch.randn(5, 16))


def test_queue_size_must_divide_by_the_global_batch():
    with pytest.raises(ConfigError, match=r"densecl\.queue_size.*optim\.batch_size"):
        build_method(_cfg("densecl.queue_size=18", "optim.batch_size=4"))


def test_momentum_is_constant_and_key_encoder_starts_as_a_copy():
    method = build_method(_cfg())
    assert isinstance(method, DenseCL)
    tau = method.momentum_schedule(7)
    assert tau.shape == (7,) and np.all(tau == 0.999)
    online = dict(method.networks.neck.named_parameters())
    for name, p in method.networks.target["neck"].named_parameters():
        assert torch.equal(p, online[name]) and not p.requires_grad


def test_forward_gradients_reach_only_the_query_side_and_keys_are_enqueued():
    torch.manual_seed(0)
    method = build_method(_cfg())
    nets = method.networks
    queue_before = nets.queue.clone()
    out = method(_batch(), torch.Generator().manual_seed(1))
    for key in ("loss", "densecl_global", "densecl_dense", "densecl_std", "densecl_queue_fill"):
        assert out[key].dim() == 0 and torch.isfinite(out[key]), key
    lam = method.cfg.densecl.loss_lambda
    assert torch.allclose(out["loss"], (1 - lam) * out["densecl_global"] + lam * out["densecl_dense"])
    assert out["densecl_queue_fill"].item() == pytest.approx(4 / 16)
    assert int(nets.queue_ptr) == 4
    assert not torch.equal(nets.queue[:, :4], queue_before[:, :4])  # the 4 new keys, unit length
    assert torch.allclose(nets.queue[:, :4].norm(dim=0), torch.ones(4))
    assert torch.equal(nets.queue[:, 4:], queue_before[:, 4:])
    out["loss"].backward()
    for name, p in nets.named_parameters():
        if name.startswith("target."):
            assert p.grad is None, name
    for module in (nets.encoder, nets.neck.mlp, nets.neck.mlp2):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
    assert nets.queue.grad is None and not nets.queue.requires_grad


def test_identical_views_give_unit_positives():
    # views=crops with no augmentation randomness left: both views are the same crop of frame a, the key encoder
    # is the query encoder's copy, so the global positive and every dense positive (self-match) are cos = 1.
    torch.manual_seed(0)
    cfg = _cfg("densecl.views=crops", "densecl.crop_scale=[1.0,1.0]", "densecl.crop_ratio=[1.0,1.0]",
               "densecl.blur_p=[0.0,0.0]", "augment.color_jitter_p=0.0", "augment.grayscale_p=0.0",
               "augment.hflip_p=0.0")  # fmt: skip
    method = build_method(cfg)
    out = method(_batch(), torch.Generator().manual_seed(1))
    assert out["densecl_pos_global"].item() == pytest.approx(1.0, abs=1e-5)
    assert out["densecl_pos_dense"].item() == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_engine_resume_is_exact_with_queues_and_exports(tmp_path):
    import torchvision

    from poodle.engine.export import export_backbone
    from poodle.engine.pair_sources import build_pair_source
    from poodle.engine.train import pretrain
    from poodle.evaluation.backbones import load_backbone

    def train(out, steps):
        cfg = _cfg()  # ckpt_every=2: the 1-step run saves at its stop step
        source, flow = build_pair_source(cfg)
        return pretrain(cfg, out, source, flow, stop_step=steps)

    straight = train(tmp_path / "straight", 2)
    train(tmp_path / "split", 1)
    resumed = train(tmp_path / "split", 2)
    a, b = straight["networks"].state_dict(), resumed["networks"].state_dict()
    assert a.keys() == b.keys() and {"queue", "queue2", "queue_ptr"} <= a.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6, rtol=1e-5), k
    assert int(a["queue_ptr"]) == 8  # 2 steps x 4 keys
    assert not torch.equal(a["queue"][:, :8], torch.zeros(16, 8))

    info = export_backbone(tmp_path / "straight", tmp_path / "r18.pth")
    assert info["arch"] == "resnet18"
    sd = torch.load(tmp_path / "r18.pth", weights_only=True)
    missing, unexpected = torchvision.models.resnet18().load_state_dict(sd, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    backbone = load_backbone(tmp_path / "straight")
    enc = straight["networks"].encoder.state_dict()
    for k, v in backbone.encoder.state_dict().items():
        assert torch.equal(v.cpu(), enc[k].cpu()), k


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        # Shuffle BN: rows 0..5 over 2 ranks; each rank's own generator differs, rank 0's permutation is broadcast.
        x = torch.arange(rank * 3, rank * 3 + 3, dtype=torch.float32).view(3, 1)
        shuffled, unshuffle = batch_shuffle(x, torch.Generator().manual_seed(100 + rank))
        result = {"x": x, "shuffled_all": concat_all_gather(shuffled), "back": batch_unshuffle(shuffled, unshuffle)}
        # A DenseCL step on each rank's own pairs: both ranks enqueue all ranks' keys, so the queues stay equal.
        torch.manual_seed(0)
        method = build_method(_cfg())
        method(_batch(n=2, seed=rank), torch.Generator().manual_seed(rank))
        result["queue"], result["ptr"] = method.networks.queue.clone(), int(method.networks.queue_ptr)
        torch.save(result, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_shuffle_bn_and_enqueue_across_two_gloo_ranks(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(Path(tmp_path) / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for r in (r0, r1):
        assert torch.equal(r["back"], r["x"])  # unshuffle undoes the shuffle on every rank
    assert torch.equal(r0["shuffled_all"], r1["shuffled_all"])  # one global permutation (rank 0's)
    rows = r0["shuffled_all"].view(-1)
    assert sorted(rows.tolist()) == list(range(6)) and rows.tolist() != list(range(6))
    assert r0["ptr"] == r1["ptr"] == 4  # 2 ranks x 2 keys
    assert torch.equal(r0["queue"], r1["queue"])
