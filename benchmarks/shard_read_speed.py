"""Read throughput of prepared shards: the tar-header scanner poodle used before wids vs `ShardPairs` (wids).

Prepares a shards folder with `poodle.data.shards.prepare_shards` (SynthDrive, exact flow, several shards), then
reads every stored pair's raw member bytes in a random order with each reader:
  - cold: a fresh reader, so the time includes indexing each shard on first use (what a DataLoader worker pays);
  - warm: further passes with the same reader (the steady state of training).
Prints pairs/s and MB/s of member bytes read; decoding (PNG + .npy, the same code for both) is timed separately.

    PYTHONPATH=src .venv/bin/python benchmarks/shard_read_speed.py
    PYTHONPATH=src .venv/bin/python benchmarks/shard_read_speed.py --pairs 128 --passes 20 --work-dir /tmp/shardbench
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from poodle.config import load_config
from poodle.data.shards import ShardPairs, prepare_shards
from poodle.data.synthdrive.dataset import generate_dataset


class TarScanReader:
    """poodle's reader before wids, kept only as this benchmark's baseline: scan a tar's headers with `tarfile`
    on first use (offset and size of every member), then seek + read."""

    def __init__(self, root: Path):
        index = json.loads((root / "index.json").read_text())
        self.paths = [root / s["url"] for s in index["shardlist"]]
        self.starts = np.concatenate([[0], np.cumsum([s["nsamples"] for s in index["shardlist"]])])
        self.index: dict[int, list[dict[str, tuple[int, int]]]] = {}

    @staticmethod
    def scan(path: Path) -> list[dict[str, tuple[int, int]]]:
        samples: list[dict[str, tuple[int, int]]] = []
        keys: list[str] = []
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                dirname, base = os.path.split(m.name)
                key, _, ext = base.partition(".")
                key = f"{dirname}/{key}" if dirname else key
                if not keys or keys[-1] != key:
                    keys.append(key)
                    samples.append({})
                samples[-1][ext] = (m.offset_data, m.size)
        return samples

    def read(self, pair: int) -> dict[str, bytes]:
        shard = int(np.searchsorted(self.starts, pair, side="right")) - 1
        if shard not in self.index:
            self.index[shard] = self.scan(self.paths[shard])
        out = {}
        with open(self.paths[shard], "rb") as f:
            for ext, (offset, size) in self.index[shard][pair - int(self.starts[shard])].items():
                f.seek(offset)
                out[ext] = f.read(size)
        return out


def timed_pass(reader, order: list[int]) -> tuple[float, int]:
    t0 = time.perf_counter()
    nbytes = sum(len(v) for i in order for v in reader.read(i).values())
    return time.perf_counter() - t0, nbytes


def measure(make_reader, num_pairs: int, passes: int, seed: int) -> dict[str, float]:
    rng = random.Random(seed)
    order = list(range(num_pairs))
    rng.shuffle(order)
    reader = make_reader()
    cold_s, nbytes = timed_pass(reader, order)
    warm_s = 0.0
    for _ in range(passes):
        rng.shuffle(order)
        warm_s += timed_pass(reader, order)[0]
    return {
        "cold_pairs_s": num_pairs / cold_s,
        "cold_mb_s": nbytes / cold_s / 1e6,
        "warm_pairs_s": passes * num_pairs / warm_s,
        "warm_mb_s": passes * nbytes / warm_s / 1e6,
        "bytes_per_pair": nbytes / num_pairs,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=96, help="pairs to prepare")
    ap.add_argument("--passes", type=int, default=10, help="timed warm passes over all pairs")
    ap.add_argument("--shard-size-mb", type=float, default=1.0, help="small, so the pairs span several shards")
    ap.add_argument("--repeats", type=int, default=3, help="independent measurements per reader; the best is shown")
    ap.add_argument("--work-dir", help="where to put the generated dataset and shards (default: a temp folder)")
    args = ap.parse_args(argv)

    tmp = tempfile.TemporaryDirectory() if args.work_dir is None else None
    work = Path(args.work_dir or tmp.name)
    synth, shards = work / "synthdrive", work / "shards"
    if not (synth / "meta.json").is_file():
        generate_dataset(synth, preset="small", train_videos=2, val_videos=0, train_images=1, val_images=0,
                         seconds=2.0, flow_pairs=0, progress=False, overwrite=True)  # fmt: skip
    if not (shards / "index.json").is_file():
        cfg = load_config("synthdrive", [f"data.root={synth}", "data.workers=0"])
        prepare_shards(cfg, shards, args.pairs, progress=False, shard_size_mb=args.shard_size_mb, overwrite=True)
    num_pairs = ShardPairs(shards).num_pairs
    readers = {
        "tar-header scanner (before)": lambda: TarScanReader(shards),
        "ShardPairs via wids (after)": lambda: ShardPairs(shards),
    }
    results: dict[str, list[dict[str, float]]] = {name: [] for name in readers}
    for r in range(args.repeats):  # interleaved, best of each: the CPU may be shared with other jobs
        for name, make in readers.items():
            results[name].append(measure(make, num_pairs, args.passes, seed=r))
    ds = ShardPairs(shards)
    t0 = time.perf_counter()
    for i in range(num_pairs):
        ds.pair(i)
    decode_rate = num_pairs / (time.perf_counter() - t0)

    index = json.loads((shards / "index.json").read_text())
    print(f"{num_pairs} pairs (64x128, png frames + fp16 flow) in {len(index['shardlist'])} shards, "
          f"{results[name][0]['bytes_per_pair'] / 1e3:.1f} kB/pair; python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs visible; best of {args.repeats}\n")  # fmt: skip
    print("| reader | cold pairs/s | cold MB/s | warm pairs/s | warm MB/s |")
    print("|---|---:|---:|---:|---:|")
    for name, runs in results.items():
        best = {k: max(run[k] for run in runs) for k in runs[0]}
        print(f"| {name} | {best['cold_pairs_s']:.0f} | {best['cold_mb_s']:.1f} | {best['warm_pairs_s']:.0f} | "
              f"{best['warm_mb_s']:.1f} |")  # fmt: skip
    print(f"\nShardPairs.pair (read + decode two PNG frames and two flows): {decode_rate:.0f} pairs/s")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
