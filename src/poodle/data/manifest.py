"""Scanning a folder of videos into a manifest (one `VideoInfo` per readable file), cached on disk.

The cache is a JSON-lines file `manifest-<hash>.jsonl` (hash of the root, the patterns and `recursive`) in
`<root>/.poodle-cache/` when the root is writable, else in `$XDG_CACHE_HOME/poodle` (`~/.cache/poodle`). An entry
is reused when the file's relative path, size and mtime are unchanged; new or changed files are probed again, and
vanished files are dropped. Unreadable videos are recorded (and cached) as skipped with the reason; they never
stop a scan.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from poodle.data.video import VideoInfo, probe_video
from poodle.progress import progress_bar

__all__ = [
    "VIDEO_PATTERNS",
    "DatasetLayoutError",
    "Manifest",
    "SkippedVideo",
    "default_cache_dir",
    "list_videos",
    "scan_manifest",
    "scan_videos",
]

log = logging.getLogger("poodle.data")

VIDEO_PATTERNS: tuple[str, ...] = ("*.mp4", "*.mov", "*.mkv", "*.avi", "*.webm")
CACHE_DIRNAME = ".poodle-cache"
_CACHE_VERSION = 1


class DatasetLayoutError(FileNotFoundError):
    """A dataset folder is missing, empty or holds no readable video; the message names it and the layout."""


@dataclass(frozen=True)
class SkippedVideo:
    path: str
    reason: str


@dataclass
class Manifest:
    """Result of a scan: readable videos (sorted by path), skipped files with reasons, and where it was cached."""

    root: str
    videos: list[VideoInfo]
    skipped: list[SkippedVideo] = field(default_factory=list)
    cache_path: str | None = None
    probed: int = 0  # files opened by this scan (0 when everything came from the cache)


def default_cache_dir(root: str | os.PathLike[str]) -> Path:
    """`<root>/.poodle-cache` if it exists or can be created there, else the per-user cache folder."""
    local = Path(root) / CACHE_DIRNAME
    try:
        local.mkdir(exist_ok=True)
        if os.access(local, os.W_OK):
            return local
    except OSError:
        pass
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "poodle"


def list_videos(root: str | os.PathLike[str], patterns: Sequence[str], recursive: bool = True) -> list[Path]:
    """Files under `root` whose name matches one of `patterns` (case-insensitive), sorted; skips hidden folders."""
    root = Path(root)
    lowered = [p.lower() for p in patterns]

    def matches(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name.lower(), p) for p in lowered)

    found: list[Path] = []
    if recursive:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # the cache, .git, ...
            found.extend(Path(dirpath) / f for f in filenames if matches(f) and not f.startswith("."))
    elif root.is_dir():
        found = [p for p in root.iterdir() if p.is_file() and matches(p.name) and not p.name.startswith(".")]
    return sorted(found)


def _cache_key(root: Path, patterns: Sequence[str], recursive: bool) -> str:
    text = json.dumps([str(root), sorted(patterns), recursive])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _load_cache(path: Path) -> dict[str, dict[str, Any]]:
    """rel path -> cached entry; an unreadable or outdated cache is just ignored."""
    entries: dict[str, dict[str, Any]] = {}
    try:
        with open(path) as f:
            header = json.loads(f.readline() or "{}")
            if header.get("version") != _CACHE_VERSION:
                return {}
            for line in f:
                entry = json.loads(line)
                entries[entry["rel"]] = entry
    except (OSError, ValueError, KeyError):
        return {}
    return entries


def _write_cache(path: Path, header: dict[str, Any], entries: Iterable[dict[str, Any]]) -> bool:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(header) + "\n")
            for entry in entries:
                f.write(json.dumps(entry) + "\n")
        os.replace(tmp, path)  # atomic: concurrent scans (DDP ranks) never read a half-written file
        return True
    except OSError as e:
        log.warning("could not write the manifest cache %s: %s", path, e)
        return False


def _probe_entry(path: Path, rel: str, size: int, mtime_ns: int) -> dict[str, Any]:
    entry: dict[str, Any] = {"rel": rel, "size": size, "mtime_ns": mtime_ns}
    try:
        info = probe_video(path).to_dict()
        info.pop("path")
        entry["info"] = info
    except Exception as e:  # any failure to read one file must not stop the scan
        entry["skipped"] = f"{type(e).__name__}: {e}"
    return entry


def scan_manifest(
    root: str | os.PathLike[str],
    patterns: Sequence[str] = VIDEO_PATTERNS,
    recursive: bool = True,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    progress: bool | None = None,
    workers: int = 1,
    expected_layout: str = "",
) -> Manifest:
    """Probe every video under `root` (reusing the cache), returning readable and skipped files.

    `progress=None` shows a bar only on a terminal. `workers` > 1 probes in threads (FFmpeg releases the GIL).
    Raises `DatasetLayoutError` when `root` is missing, holds no matching file, or no readable video.
    """
    root = Path(root).expanduser().resolve()
    layout = f" Expected layout: {expected_layout}" if expected_layout else ""
    if not root.is_dir():
        raise DatasetLayoutError(f"dataset folder {root} does not exist.{layout}")
    files = list_videos(root, patterns, recursive)
    where = "under" if recursive else "directly in"
    if not files:
        raise DatasetLayoutError(f"no video files matching {list(patterns)} {where} {root}.{layout}")

    cache_path = None
    cached: dict[str, dict[str, Any]] = {}
    if use_cache:
        cache_path = (
            Path(cache_dir or default_cache_dir(root)) / f"manifest-{_cache_key(root, patterns, recursive)}.jsonl"
        )
        cached = _load_cache(cache_path)

    entries: dict[str, dict[str, Any]] = {}
    to_probe: list[tuple[Path, str, int, int]] = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            st = path.stat()
        except OSError as e:
            entries[rel] = {"rel": rel, "size": -1, "mtime_ns": -1, "skipped": f"cannot stat: {e}"}
            continue
        old = cached.get(rel)
        if old is not None and old.get("size") == st.st_size and old.get("mtime_ns") == st.st_mtime_ns:
            entries[rel] = old
        else:
            to_probe.append((path, rel, st.st_size, st.st_mtime_ns))

    if to_probe:
        bar = progress_bar(len(to_probe), f"probing videos in {root.name}", "video", enabled=progress)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for entry in pool.map(lambda a: _probe_entry(*a), to_probe):
                entries[entry["rel"]] = entry
                bar.update()
        bar.close()

    ordered = [entries[path.relative_to(root).as_posix()] for path in files]
    if cache_path is not None and (to_probe or len(cached) != len(ordered)):
        header = {"version": _CACHE_VERSION, "root": str(root), "patterns": list(patterns), "recursive": recursive}
        if not _write_cache(cache_path, header, ordered):
            cache_path = None

    videos: list[VideoInfo] = []
    skipped: list[SkippedVideo] = []
    for entry in ordered:
        path = str(root / entry["rel"])
        if "info" in entry:
            videos.append(VideoInfo.from_dict({**entry["info"], "path": path}))
        else:
            skipped.append(SkippedVideo(path, entry.get("skipped", "unknown")))
    manifest = Manifest(str(root), videos, skipped, str(cache_path) if cache_path else None, probed=len(to_probe))
    log.info(
        "manifest %s: %d videos, %d skipped (%d probed, %d from cache)",
        root,
        len(videos),
        len(skipped),
        len(to_probe),
        len(ordered) - len(to_probe),
    )
    if skipped:
        shown = "; ".join(f"{s.path}: {s.reason}" for s in skipped[:5])
        log.warning(
            "%d unreadable video(s) skipped under %s: %s%s", len(skipped), root, shown, " ..." * (len(skipped) > 5)
        )
    if not videos:
        raise DatasetLayoutError(f"no readable video {where} {root} ({len(skipped)} unreadable: {shown}).{layout}")
    return manifest


def scan_videos(
    root: str | os.PathLike[str],
    patterns: Sequence[str] = VIDEO_PATTERNS,
    recursive: bool = True,
    **kwargs: Any,
) -> list[VideoInfo]:
    """The readable videos of `scan_manifest` (skipped files are logged; use `scan_manifest` to get them)."""
    return scan_manifest(root, patterns, recursive, **kwargs).videos
