"""poodle.data.manifest: scanning, skipped files, the on-disk cache and layout errors."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

import poodle.data.manifest as manifest_mod
from poodle.data.manifest import DatasetLayoutError, default_cache_dir, list_videos, scan_manifest, scan_videos
from video_fixtures import write_video


@pytest.fixture
def folder(tmp_path) -> Path:
    root = tmp_path / "data"
    (root / "a" / "b").mkdir(parents=True)
    write_video(root / "one.mp4", 40)
    write_video(root / "a" / "two.MOV", 50)  # extensions match case-insensitively
    write_video(root / "a" / "b" / "three.avi", 60, codec="mpeg4")
    (root / "notes.txt").write_text("not a video")
    return root


def add_bad_files(root: Path) -> None:
    (root / "garbage.mkv").write_bytes(np.random.default_rng(0).bytes(3000))
    good = write_video(root / "tmp.mov", 60).read_bytes()  # moov atom at the end: half a file has no index
    (root / "tmp.mov").unlink()
    (root / "truncated.mov").write_bytes(good[: len(good) // 2])


@pytest.fixture
def count_probes(monkeypatch):
    calls: list[str] = []
    real = manifest_mod.probe_video

    def counting(path):
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(manifest_mod, "probe_video", counting)
    return calls


def test_listing_is_recursive_sorted_and_filtered(folder):
    names = [p.relative_to(folder).as_posix() for p in list_videos(folder, ("*.mp4", "*.mov", "*.avi"))]
    assert names == ["a/b/three.avi", "a/two.MOV", "one.mp4"]
    assert [p.name for p in list_videos(folder, ("*.mp4", "*.mov"), recursive=False)] == ["one.mp4"]


def test_scan_probes_and_corrupt_files_are_skipped_with_reasons(folder, tmp_path, caplog):
    add_bad_files(folder)
    with caplog.at_level(logging.WARNING, logger="poodle.data"):
        m = scan_manifest(folder, cache_dir=tmp_path / "cache", progress=False, workers=2)
    assert [Path(v.path).name for v in m.videos] == ["three.avi", "two.MOV", "one.mp4"]
    assert [v.frame_count for v in m.videos] == [60, 50, 40]
    assert sorted(Path(s.path).name for s in m.skipped) == ["garbage.mkv", "truncated.mov"]
    assert all("VideoDecodeError" in s.reason for s in m.skipped)
    assert "2 unreadable video(s)" in caplog.text
    assert scan_videos(folder, cache_dir=tmp_path / "cache") == m.videos


def test_cache_is_reused_and_invalidated_by_a_changed_file(folder, tmp_path, count_probes):
    add_bad_files(folder)
    cache = tmp_path / "cache"
    first = scan_manifest(folder, cache_dir=cache, progress=False)
    assert len(count_probes) == 5 and first.probed == 5
    assert Path(first.cache_path).name.startswith("manifest-") and Path(first.cache_path).exists()
    lines = Path(first.cache_path).read_text().splitlines()
    assert json.loads(lines[0])["version"] == 1 and len(lines) == 6

    count_probes.clear()
    second = scan_manifest(folder, cache_dir=cache, progress=False)
    assert count_probes == []  # nothing opened: sizes and mtimes match, bad files stay skipped from the cache
    assert second.videos == first.videos and second.skipped == first.skipped

    # Rewrite one video (different length, later mtime): only that file is probed again.
    write_video(folder / "one.mp4", 70)
    st = (folder / "one.mp4").stat()
    os.utime(folder / "one.mp4", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = scan_manifest(folder, cache_dir=cache, progress=False)
    assert [Path(p).name for p in count_probes] == ["one.mp4"]
    assert {Path(v.path).name: v.frame_count for v in third.videos}["one.mp4"] == 70

    # A new file is probed, a removed one disappears.
    count_probes.clear()
    (folder / "a" / "two.MOV").unlink()
    write_video(folder / "four.webm", 30, codec="libvpx-vp9")
    fourth = scan_manifest(folder, cache_dir=cache, progress=False)
    assert [Path(p).name for p in count_probes] == ["four.webm"]
    assert sorted(Path(v.path).name for v in fourth.videos) == ["four.webm", "one.mp4", "three.avi"]


def test_default_cache_dir_is_inside_a_writable_root(folder, count_probes):
    assert default_cache_dir(folder) == folder / ".poodle-cache"
    m = scan_manifest(folder, progress=False)
    assert Path(m.cache_path).parent == folder / ".poodle-cache"
    count_probes.clear()
    scan_manifest(folder, progress=False)
    assert count_probes == []


def test_default_cache_dir_falls_back_to_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(manifest_mod.os, "access", lambda *a, **k: False)  # as if the root were read-only
    assert default_cache_dir(tmp_path / "readonly") == tmp_path / "xdg" / "poodle"


def test_missing_empty_and_all_unreadable_folders_give_clear_errors(tmp_path):
    with pytest.raises(DatasetLayoutError, match=r"does not exist.*Expected layout: ROOT/videos"):
        scan_manifest(tmp_path / "nowhere", expected_layout="ROOT/videos/train/*.mov")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(DatasetLayoutError, match=r"no video files matching .*empty"):
        scan_manifest(empty, cache_dir=tmp_path / "c")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.mp4").write_bytes(b"not a video at all" * 100)
    with pytest.raises(DatasetLayoutError, match=r"no readable video.*x\.mp4"):
        scan_manifest(bad, cache_dir=tmp_path / "c")
