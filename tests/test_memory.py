"""The fake-tensor memory model (poodle.engine.memory): it allocates what the real step allocates, and its
fixed parts have known sizes."""

from __future__ import annotations

import pytest

from poodle.config import load_config
from poodle.engine.memory import step_memory
from poodle.engine.optim import param_groups
from poodle.model import PooDLeNetworks

SMALL = ["model.arch=resnet18", "data.resolution=[64,128]", "model.proj_hidden_dim=64", "model.proj_out_dim=32",
         "subcrops.size=32"]  # fmt: skip


def test_fake_step_allocates_what_the_real_step_does():
    """bf16 (CPU autocast): the harder case, where autocast's casts and caches must be followed too."""
    cfg = load_config("poodle_bdd100k", [*SMALL, "run.precision=bf16"])
    fake = step_memory(cfg, 2)
    real = step_memory(cfg, 2, fake=False)
    for name, value in real.by_category.items():  # measured: equal to 0.07 % (CPU kernels' own buffers)
        assert fake.by_category[name] == pytest.approx(value, rel=2e-3, abs=1024), name
    assert fake.peak > 0


def test_fixed_parts_have_their_known_sizes_and_the_rest_grows_with_pairs():
    cfg = load_config("poodle_bdd100k", [*SMALL, "run.precision=fp32", "objective.dense_chunk=0"])
    mem = step_memory(cfg, 2)
    nets = PooDLeNetworks(cfg.model, dense=True, pooled=True)
    all_params = sum(p.numel() for p in nets.parameters())  # online + EMA target
    trained = sum(p.numel() for g in param_groups(nets, cfg.optim.weight_decay) for p in g["params"])
    assert mem.by_category["parameters"] == 4 * all_params
    # AdamW: exp_avg and exp_avg_sq per trained parameter, plus one step counter (a 4-byte scalar) per tensor
    tensors = sum(len(g["params"]) for g in param_groups(nets, cfg.optim.weight_decay))
    assert 8 * trained <= mem.by_category["optimizer"] <= 8 * trained + 4 * tensors + 512 * tensors
    # The batch-dependent part (measured: 96 MB at 2 pairs, 148 MB at 4) grows, but less than the batch
    fixed = mem.by_category["parameters"] + mem.by_category["optimizer"] + mem.by_category["buffers"]
    variable2 = mem.peak - fixed
    variable4 = step_memory(cfg, 4).peak - fixed
    assert 1.2 * variable2 < variable4 < 2.0 * variable2
