"""Prepared shards: frame pairs decoded once and their optical flow computed once, stored as WebDataset tars.

Why: on the fly, every training step decodes video (seeking inside 720p/1080p files, resizing on the CPU) and runs
RAFT twice. `prepare_shards` does both offline, once; `ShardPairs` then serves pairs
that training reads as is (the batch carries `flow_ab`/`flow_ba`, so the loop runs no flow estimator).

Layout of a shards folder (written atomically: into a hidden sibling folder that is renamed at the end)::

    OUT/shard-000000.tar, shard-000001.tar, ...   WebDataset tars, one sample per pair (key = 9-digit pair index):
        <key>.frame_a.png  <key>.frame_b.png       the two outer-cropped frames, RGB uint8 (or .jpg, quality 95)
        <key>.flow_ab.npy  <key>.flow_ba.npy       forward / backward flow, float16 (2, H, W), pixels (dx, dy)
        <key>.meta.json                            source video, t, t + dt, crop box, scale, flow source
    OUT/index.json                                 wids shard index ("wids-shard-index-v1") + a "poodle" section
    OUT/prepare.json                               config used, counts, timings, skipped/corrupt videos

Precision: float16 keeps 11 significant bits, so a stored vector is within 2**-11 relative of the estimate: under
0.016 px below 32 px of motion, 0.03 px up to 64 px, 0.125 px up to 256 px - far below any estimator's error.
Components are clamped to +-32768 px (`FLOW_LIMIT`; float16 overflows at 65504), beyond any frame side.
Frames are PNG (lossless, bit-exact) by default; `.jpg` at quality 95 is ~3-4x smaller and decodes faster, but the
frames then differ slightly from those the flow was computed on (the flow stays the estimate of the exact frames).

Items: pairs are written in groups of `data.repeat` consecutive pairs that come from one video load, exactly as
the on-the-fly loader returns them, so one `ShardPairs` item = one group of `repeat` pairs and the engine's
`videos_per_rank` arithmetic (batch_size / world / repeat) is unchanged. Training must use the `data.repeat` the
shards were prepared with (the error says so). The stored pairs are fixed: a later pass over the shards reads the
same pairs again (augmentation and subcrops still differ each time, they run in the step), so prepare as many
pairs as the run should see distinct ones.

Random access goes through wids (the indexed WebDataset reader, its own package on PyPI): on first use of a
shard in a process, `wids.wids.IndexedTarSamples` memory-maps the tar and indexes its member headers once; a
sample is then a dict of its members' bytes. `ShardPairs` keeps up to `MAX_OPEN_SHARDS` shards open per process
(least recently used closed first). `index.json` follows the wids format, so the same folder is also readable with
`wids.ShardListDataset("OUT/index.json")` (URLs are relative to the index file).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from wids.wids import IndexedTarSamples
from wids.wids_lru import LRUCache

from poodle.config import Config, DataConfig
from poodle.output_dir import MARKER, OutputDirError, check_replaceable, write_marker
from poodle.progress import progress_bar

__all__ = [
    "FLOW_LIMIT",
    "FRAME_FORMATS",
    "INDEX_KIND",
    "SHARD_PATTERN",
    "ShardError",
    "ShardPairs",
    "decode_frame",
    "encode_frame",
    "prepare_shards",
]

log = logging.getLogger("poodle.data")

INDEX_KIND = "wids-shard-index-v1"
FORMAT_VERSION = 1
SHARD_PATTERN = "shard-%06d.tar"
FRAME_FORMATS = ("png", "jpg")
# float16 tops out at 65504; SynthDrive's exact flow reaches 1e6 px near the camera plane. Vectors are clamped to
# +-FLOW_LIMIT, which changes nothing downstream: any |component| >= the image side already leaves the frame, so
# the validity mask, occlusion mask and subcrop search treat the clamped and the true vector alike.
FLOW_LIMIT = 32768.0
PNG_LEVEL = 1  # zlib level: 1 is ~2x faster to write than 6 and only a few % larger on natural images
# An open shard holds two file descriptors (the file and its memory map); 64 keeps a DataLoader worker far below
# the usual 1024 limit. More shards than this are reopened (and re-indexed) as random access reaches them.
MAX_OPEN_SHARDS = 64


class ShardError(ValueError):
    """A shards folder is missing, damaged, or does not match the config; the message says what to do."""


# ------------------------------------------------------------------------------------------------------ codecs


def encode_frame(frame: torch.Tensor | np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
    """(3, H, W) RGB uint8 -> PNG (lossless) or JPEG bytes."""
    arr = frame.numpy() if isinstance(frame, torch.Tensor) else frame
    bgr = np.ascontiguousarray(arr.transpose(1, 2, 0)[:, :, ::-1])
    if fmt == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL])
    elif fmt == "jpg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    else:
        raise ValueError(f"frame format must be one of {FRAME_FORMATS}, got {fmt!r}")
    if not ok:
        raise RuntimeError(f"OpenCV could not encode a {fmt} frame of shape {arr.shape}")
    return buf.tobytes()


def decode_frame(data: bytes) -> torch.Tensor:
    """PNG/JPEG bytes -> (3, H, W) RGB uint8."""
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ShardError("a stored frame does not decode (damaged shard?)")
    return torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1].transpose(2, 0, 1)))


def _encode_flow(flow: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    np.save(buf, flow.clamp(-FLOW_LIMIT, FLOW_LIMIT).numpy().astype(np.float16), allow_pickle=False)
    return buf.getvalue()


def _decode_flow(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False).astype(np.float32))


# ------------------------------------------------------------------------------------------------------ writer


class _PrepareItems(Dataset):
    """Wraps a pair dataset for the writer's DataLoader: never raises, reports the worker's failures with each item."""

    def __init__(self, dataset: Dataset, flow_name: str | None):
        self.dataset = dataset
        self.flow_name = flow_name

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int) -> dict[str, Any]:
        from poodle.data.pairs import PairDataError

        try:
            sample = dict(self.dataset[key])
        except PairDataError as e:  # every retry failed; the item is skipped and counted
            return {"key": key, "error": str(e), "failures": dict(getattr(self.dataset, "failures", {}))}
        if "meta" in sample:  # FramePairDataset: PairMeta -> plain dicts
            sample["meta"] = [_video_meta(m) for m in sample["meta"]]
        else:  # SynthDrivePairs: the renderer's draws describe the pair exactly
            sample["meta"] = [_synth_meta(self.dataset, d) for d in self.dataset.draws(key)]
        sample["key"] = key
        sample["failures"] = dict(getattr(self.dataset, "failures", {}))
        return sample


def _video_meta(m) -> dict[str, Any]:
    crop = m.crop
    return {
        "source": m.path, "video_index": m.video_index, "item": m.item, "t_a": m.t_a, "t_b": m.t_b, "dt": m.dt,
        "fps": m.fps, "scale": crop.scale, "source_hw": list(crop.source_hw), "resized_hw": list(crop.resized_hw),
        "crop_box": list(crop.box),
    }  # fmt: skip


def _synth_meta(ds, d: dict[str, Any]) -> dict[str, Any]:
    return {
        "source": f"synthdrive(seed={ds.world_seed}, sequence={d['index']})", "video_index": d["video"],
        "t_a": d["t_a"], "t_b": d["t_b"], "dt": d["t_b"] - d["t_a"], "fps": ds.fps, "scale": d["scale"],
        "resized_hw": list(d["resized_hw"]), "crop_box": list(d["box"]),
    }  # fmt: skip


def _as_list(samples: list) -> list:
    return samples


def _pair_source(cfg: Config, seed: int, flow_estimator, device: torch.device):
    """(dataset, estimator or None when the dataset carries exact flow, flow name, {path: reason} skipped at scan)."""
    if cfg.data.dataset == "shards":
        raise ShardError("data.dataset=shards: prepare reads videos (bdd100k, wt, folder or synthdrive), not shards")
    if cfg.flow.source == "gt":
        if cfg.data.dataset != "synthdrive":
            raise ShardError(
                f"flow.source=gt needs ground-truth flow, which only SynthDrive has (data.dataset is "
                f"{cfg.data.dataset!r}); use --flow dis or --flow raft_large"
            )
        from poodle.data.synthdrive.pairs import SynthDrivePairs

        return SynthDrivePairs(cfg.data, seed=seed), None, "gt", {}
    from poodle.data.manifest import VIDEO_PATTERNS, scan_manifest
    from poodle.data.optical_flow import build_flow_estimator
    from poodle.data.pairs import _dataset_dir, build_pair_dataset

    dataset = build_pair_dataset(cfg.data, seed=seed)
    # Files the scan found unreadable: rescanning hits the manifest cache just written, so this opens no video.
    folder, recursive = _dataset_dir(cfg.data)
    manifest = scan_manifest(folder, VIDEO_PATTERNS, recursive, progress=False, workers=max(1, cfg.data.workers))
    skipped = {s.path: s.reason for s in manifest.skipped}
    if flow_estimator is None:
        flow_estimator = build_flow_estimator(cfg.flow, device)
    if isinstance(flow_estimator, torch.nn.Module):
        flow_estimator = flow_estimator.to(device).eval()
    return dataset, flow_estimator, getattr(flow_estimator, "name", cfg.flow.source), skipped


def _check_out_dir(out: Path, overwrite: bool) -> None:
    try:  # --overwrite replaces a shards folder poodle wrote (its marker), never an unrelated folder
        check_replaceable(
            out, "shards", overwrite, legacy=("index.json", ("shard-*.tar", "index.json", "prepare.json", MARKER))
        )
    except OutputDirError as e:
        raise ShardError(str(e)) from None


def prepare_shards(
    cfg: Config,
    out_dir: str | Path,
    num_pairs: int,
    flow_estimator=None,
    *,
    shard_size_mb: float = 1024,
    workers: int | None = None,
    progress: bool | None = True,
    seed: int | None = None,
    frame_format: str = "png",
    jpeg_quality: int = 95,
    flow_batch: int = 16,
    device: str | torch.device | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Sample `num_pairs` pairs as training does, compute their flow, write WebDataset shards to `out_dir`.

    Pairs come from the config's dataset (`build_pair_dataset(cfg.data)`, outer crop at `cfg.data.resolution`), or
    from the SynthDrive renderer with exact flow when `flow.source=gt`. Flow comes from `flow_estimator` (default:
    `build_flow_estimator(cfg.flow, device)`), run on `flow_batch` pairs at a time in both directions. Sample key k
    = k-th video load (video k % num_videos, pass k // num_videos), seeded like training's sample keys; `num_pairs`
    is rounded up to whole loads of `data.repeat` pairs. Returns the `prepare.json` summary.
    """
    if frame_format not in FRAME_FORMATS:
        raise ShardError(f"frame format must be one of {FRAME_FORMATS}, got {frame_format!r}")
    if num_pairs <= 0:
        raise ShardError(f"the number of pairs must be positive, got {num_pairs}")
    if shard_size_mb <= 0:
        raise ShardError(f"shard size must be positive, got {shard_size_mb} MB")
    out = Path(out_dir).expanduser().absolute()
    _check_out_dir(out, overwrite)
    seed = cfg.run.seed if seed is None else int(seed)
    workers = cfg.data.workers if workers is None else int(workers)
    if device is None:
        device = "cuda" if cfg.run.device != "cpu" and torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if progress is None:
        progress = sys.stderr.isatty()

    t_start = time.perf_counter()
    dataset, estimator, flow_name, scan_skipped = _pair_source(cfg, seed, flow_estimator, device)
    repeat = cfg.data.repeat
    num_items = math.ceil(num_pairs / repeat)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        summary = _write(
            tmp, dataset, estimator, flow_name, num_items, repeat, shard_size_mb, workers, progress, frame_format,
            jpeg_quality, flow_batch, device,
        )  # fmt: skip
        t_index = time.perf_counter()
        shardlist = []
        for path in sorted(tmp.glob("shard-*.tar")):
            tar = IndexedTarSamples(path=str(path))
            shardlist.append({"url": path.name, "nsamples": len(tar), "filesize": path.stat().st_size})
            tar.close()
        h, w = cfg.data.resolution
        index = {
            "__kind__": INDEX_KIND,
            "wids_version": 1,
            "name": out.name,
            "shardlist": shardlist,
            "poodle": {
                "format_version": FORMAT_VERSION, "resolution": [h, w], "repeat": repeat,
                "pairs": summary["pairs"], "frame_format": frame_format, "flow_source": flow_name,
                "flow_dtype": "float16", "flow_limit": FLOW_LIMIT, "seed": seed,
            },
        }  # fmt: skip
        (tmp / "index.json").write_text(json.dumps(index, indent=1) + "\n")
        timings = summary.pop("timings")
        timings["index_s"] = time.perf_counter() - t_index
        timings["total_s"] = time.perf_counter() - t_start
        total_bytes = sum(s["filesize"] for s in shardlist)
        report = {
            "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **summary,
            "skipped_at_scan": scan_skipped,
            "requested_pairs": num_pairs,
            "repeat": repeat,
            "resolution": [h, w],
            "dataset": cfg.data.dataset,
            "root": cfg.data.root,
            "flow_source": flow_name,
            "flow_device": str(device) if estimator is not None else None,
            "frame_format": frame_format,
            "jpeg_quality": jpeg_quality if frame_format == "jpg" else None,
            "seed": seed,
            "shards": len(shardlist),
            "bytes": total_bytes,
            "bytes_per_pair": total_bytes / max(1, summary["pairs"]),
            "timings": {k: round(v, 3) for k, v in timings.items()},
            "pairs_per_second": summary["pairs"] / max(1e-9, timings["total_s"]),
            "host": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()},
            "config": cfg.to_dict(),
        }
        (tmp / "prepare.json").write_text(json.dumps(report, indent=1) + "\n")
        write_marker(tmp, "shards")
        if out.exists():  # empty, or a previous shards folder with overwrite=True (checked above)
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def _write(
    tmp: Path, dataset, estimator, flow_name: str, num_items: int, repeat: int, shard_size_mb: float, workers: int,
    progress: bool, frame_format: str, jpeg_quality: int, flow_batch: int, device: torch.device,
) -> dict[str, Any]:  # fmt: skip
    import webdataset as wds

    items_per_batch = max(1, flow_batch // repeat)
    loader = DataLoader(
        _PrepareItems(dataset, flow_name),
        batch_size=items_per_batch,
        sampler=range(num_items),  # sample keys 0..num_items-1 (key = video load; key % len = video)
        num_workers=workers,
        collate_fn=_as_list,
        prefetch_factor=2 if workers > 0 else None,
    )
    failures: dict[str, str] = {}
    failed_items: list[dict[str, Any]] = []
    pairs = 0
    t_load = t_flow = t_write = 0.0
    writer = wds.ShardWriter(str(tmp / SHARD_PATTERN), maxsize=shard_size_mb * 1e6, maxcount=10**9, verbose=0)
    bar = progress_bar(num_items * repeat, "prepare", "pair", enabled=progress)
    try:
        t0 = time.perf_counter()
        for batch in loader:
            t1 = time.perf_counter()
            t_load += t1 - t0
            for s in batch:
                failures.update(s["failures"])
            good = []
            for s in batch:
                if "error" in s:
                    failed_items.append({"key": s["key"], "error": s["error"]})
                    bar.update(repeat)
                else:
                    good.append(s)
            if not good:
                t0 = time.perf_counter()
                continue
            frame_a = torch.cat([s["frame_a"] for s in good])
            frame_b = torch.cat([s["frame_b"] for s in good])
            if estimator is None:
                flow_ab = torch.cat([s["flow_ab"] for s in good])
                flow_ba = torch.cat([s["flow_ba"] for s in good])
            else:
                with torch.inference_mode():
                    flow_ab, flow_ba = estimator.bidirectional(frame_a.to(device), frame_b.to(device))
                flow_ab, flow_ba = flow_ab.float().cpu(), flow_ba.float().cpu()
            t2 = time.perf_counter()
            t_flow += t2 - t1
            metas = [dict(m, key=s["key"], pair=r, flow=flow_name) for s in good for r, m in enumerate(s["meta"])]
            for i, meta in enumerate(metas):
                writer.write({
                    "__key__": f"{pairs:09d}",
                    f"frame_a.{frame_format}": encode_frame(frame_a[i], frame_format, jpeg_quality),
                    f"frame_b.{frame_format}": encode_frame(frame_b[i], frame_format, jpeg_quality),
                    "flow_ab.npy": _encode_flow(flow_ab[i]),
                    "flow_ba.npy": _encode_flow(flow_ba[i]),
                    "meta.json": json.dumps(meta).encode(),
                })  # fmt: skip
                pairs += 1
            bar.update(len(metas))
            t0 = time.perf_counter()
            t_write += t0 - t2
    finally:
        writer.close()
        bar.close()
    if failures:
        log.warning("prepare: %d unreadable video(s) skipped: %s", len(failures), "; ".join(failures))
    if pairs == 0:
        raise ShardError(f"no pair could be read; failures: {failed_items or failures}")
    return {
        "pairs": pairs,
        "items": pairs // repeat,
        "failed_items": failed_items,
        "failed_reads": failures,  # read-time decode failures (the dataset drew another video)
        "timings": {"load_s": t_load, "flow_s": t_flow, "write_s": t_write},
    }


# ------------------------------------------------------------------------------------------------------ reader


class ShardPairs(Dataset):
    """Random access over prepared shards: `ds[key]` -> the `repeat` pairs of group `key % len(ds)`.

    Returns `frame_a`, `frame_b` uint8 (R, 3, H, W) and `flow_ab`, `flow_ba` float32 (R, 2, H, W), which
    `poodle.engine.pair_sources.collate_pair_samples` stacks into a batch that needs no flow estimator.
    `resolution` / `repeat`, when given (from the config), must match what the shards hold.
    """

    def __init__(
        self, root: str | Path, *, resolution: tuple[int, int] | None = None, repeat: int | None = None
    ) -> None:
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise ShardError(f"shards folder not found: {self.root} (create it with `poodle prepare --out {root}`)")
        index_path = self.root / "index.json"
        if not index_path.is_file():
            raise ShardError(
                f"{self.root} has no index.json, so it is not a prepared shards folder (or `poodle prepare` did not "
                "finish); create it with `poodle prepare --out DIR`"
            )
        try:
            index = json.loads(index_path.read_text())
        except json.JSONDecodeError as e:
            raise ShardError(f"{index_path} is not valid JSON: {e}") from e
        if index.get("__kind__") != INDEX_KIND or "poodle" not in index:
            raise ShardError(f"{index_path} is not a poodle shard index ({INDEX_KIND} with a 'poodle' section)")
        info = index["poodle"]
        self.info = info
        self.resolution = tuple(info["resolution"])
        self.repeat = int(info["repeat"])
        self.frame_format = info["frame_format"]
        self.flow_source = info["flow_source"]
        if resolution is not None and tuple(resolution) != self.resolution:
            h, w = self.resolution
            raise ShardError(
                f"resolution mismatch: the shards at {self.root} hold {h}x{w} pairs but data.resolution is "
                f"{resolution[0]}x{resolution[1]}; set data.resolution=[{h},{w}] or prepare new shards at this "
                "resolution"
            )
        if repeat is not None and int(repeat) != self.repeat:
            raise ShardError(
                f"repeat mismatch: the shards at {self.root} store pairs in groups of data.repeat={self.repeat} "
                f"(one video load each) but data.repeat is {repeat}; set data.repeat={self.repeat} (and a "
                "batch size that is a multiple of it) or prepare new shards with this data.repeat"
            )
        self.shard_paths: list[Path] = []
        counts = []
        for entry in index["shardlist"]:
            path = self.root / entry["url"]
            if not path.is_file():
                raise ShardError(f"shard {path} listed in {index_path} is missing")
            if "filesize" in entry and path.stat().st_size != entry["filesize"]:
                raise ShardError(
                    f"shard {path} has {path.stat().st_size} bytes, index.json says {entry['filesize']}: the copy is "
                    "incomplete or damaged; copy it again or re-run `poodle prepare`"
                )
            self.shard_paths.append(path)
            counts.append(int(entry["nsamples"]))
        self.num_pairs = int(sum(counts))
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        if self.num_pairs < self.repeat:
            raise ShardError(f"{self.root} holds {self.num_pairs} pair(s), fewer than one group of {self.repeat}")
        self._open = LRUCache(MAX_OPEN_SHARDS, release_handler=_close)  # per process, filled lazily

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers (spawn) get no open memory maps, they open their own
        return dict(self.__dict__, _open=None)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._open = LRUCache(MAX_OPEN_SHARDS, release_handler=_close)

    @classmethod
    def from_config(cls, cfg: DataConfig) -> ShardPairs:
        if not cfg.root:
            raise ShardError("data.root is empty; pass --data SHARDS_DIR (a folder written by `poodle prepare`)")
        return cls(cfg.root, resolution=tuple(cfg.resolution), repeat=cfg.repeat)

    def __len__(self) -> int:
        return self.num_pairs // self.repeat

    def _shard(self, shard: int) -> IndexedTarSamples:
        tar = self._open[shard]  # None when not open in this process
        if tar is None:
            path = self.shard_paths[shard]
            try:
                tar = IndexedTarSamples(path=str(path))
            except (OSError, ValueError) as e:
                raise ShardError(f"shard {path} cannot be read as a tar ({e}); re-run `poodle prepare`") from e
            expected = int(self._starts[shard + 1] - self._starts[shard])
            if len(tar) != expected:
                tar.close()
                raise ShardError(f"shard {path} holds {len(tar)} samples, index.json says {expected}")
            self._open[shard] = tar
        return tar

    def read(self, pair: int) -> dict[str, bytes]:
        """Raw member bytes of stored pair `pair` (0 <= pair < num_pairs), by extension ("frame_a.png", ...)."""
        if not 0 <= pair < self.num_pairs:
            raise IndexError(f"pair {pair} out of range [0, {self.num_pairs})")
        shard = int(np.searchsorted(self._starts, pair, side="right")) - 1
        sample = self._shard(shard)[pair - int(self._starts[shard])]
        # wids keys members by ".ext" and adds "__key__"
        return {ext[1:]: data.getvalue() for ext, data in sample.items() if ext.startswith(".")}

    def pair(self, pair: int) -> dict[str, Any]:
        """Stored pair `pair`: frames (3, H, W) uint8, flows (2, H, W) float32, `meta` dict."""
        raw = self.read(pair)
        fmt = self.frame_format
        return {
            "frame_a": decode_frame(raw[f"frame_a.{fmt}"]),
            "frame_b": decode_frame(raw[f"frame_b.{fmt}"]),
            "flow_ab": _decode_flow(raw["flow_ab.npy"]),
            "flow_ba": _decode_flow(raw["flow_ba.npy"]),
            "meta": json.loads(raw["meta.json"]),
        }

    def __getitem__(self, key: int) -> dict[str, torch.Tensor]:
        key = int(key)
        if key < 0:
            raise IndexError(f"negative key {key}")
        first = (key % len(self)) * self.repeat
        pairs = [self.pair(first + r) for r in range(self.repeat)]
        return {k: torch.stack([p[k] for p in pairs]) for k in ("frame_a", "frame_b", "flow_ab", "flow_ba")}

    def summary(self) -> dict[str, Any]:
        return {"root": str(self.root), "pairs": self.num_pairs, "items": len(self), **self.info}


def _close(_shard: int, tar: IndexedTarSamples) -> None:
    tar.close()
