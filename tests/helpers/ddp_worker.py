"""Run under `torchrun --nproc_per_node 2` by tests/test_engine.py: trains a few steps with DDP (gloo, CPU) and
writes, per rank, the final online weights and a checksum of every batch the rank read."""

import sys

import torch
import torch.distributed as dist

from poodle.config import load_config
from poodle.engine.pair_sources import build_pair_source
from poodle.engine.train import pretrain


def main(out: str, steps: int, *overrides: str) -> None:
    cfg = load_config("synthdrive", list(overrides))
    source, flow = build_pair_source(cfg)
    seen = []

    class RecordingSource:
        num_videos = source.num_videos
        videos_per_rank = staticmethod(source.videos_per_rank)

        def __call__(self, start, stop, info):
            for batch in source(start, stop, info):
                seen.append(float(batch.frame_a.float().sum()))
                yield batch

    result = pretrain(cfg, out, RecordingSource(), flow, stop_step=steps)
    rank = dist.get_rank()
    weights = {k: v for k, v in result["networks"].state_dict().items()}
    torch.save({"seen": seen, "step": result["step"], "weights": weights}, f"{out}/rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:])
