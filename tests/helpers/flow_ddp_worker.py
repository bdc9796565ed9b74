"""Run under `torchrun --nproc_per_node 2`: a few label-free flow steps; each rank saves its weights."""

import sys
from pathlib import Path

import torch

from poodle.engine.distributed import shutdown_distributed
from poodle.flowtrain.config import load_flow_train_config
from poodle.flowtrain.train import build_flow_pair_source, train_flow

out, steps, overrides = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
torch.set_num_threads(1)
cfg = load_flow_train_config("flow_train_synthdrive_cpu", overrides)
result = train_flow(cfg, out, build_flow_pair_source(cfg), stop_step=steps)
rank = torch.distributed.get_rank()
torch.save({"step": result["step"], "weights": result["raft"].state_dict()}, out / f"rank{rank}.pt")
shutdown_distributed()
