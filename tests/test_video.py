"""poodle.data.video on tiny real videos whose frames carry their own index (see video_fixtures)."""

from __future__ import annotations

import numpy as np
import pytest

from poodle.data.video import ReadStats, VideoDecodeError, probe_video, read_frames
from video_fixtures import decode_index, write_video

FORMATS = [
    ("mov", {}),
    ("mp4", {}),
    ("avi", {"codec": "mpeg4"}),
    ("webm", {"codec": "libvpx-vp9"}),
]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    d = tmp_path_factory.mktemp("videos")
    out = {ext: write_video(d / f"clip.{ext}", 90, **kw) for ext, kw in FORMATS}
    out["long"] = write_video(d / "long.mp4", 600, gop=60)
    return out


def indices_of(frames: np.ndarray, rotation: int = 0) -> list[int]:
    return [decode_index(np.rot90(f, -rotation // 90)) for f in frames]


@pytest.mark.parametrize("ext", [f for f, _ in FORMATS])
def test_probe_and_random_access_equals_sequential(videos, ext):
    info = probe_video(videos[ext])
    assert (info.frame_count, info.width, info.height, info.rotation) == (90, 96, 64, 0)
    assert info.fps == pytest.approx(30.0)
    assert info.duration_s == pytest.approx(3.0, abs=0.05)
    assert info.size_bytes == videos[ext].stat().st_size
    sequential = read_frames(videos[ext], list(range(90)), info)
    assert indices_of(sequential) == list(range(90))
    wanted = [77, 3, 45, 89, 3, 0, 46]
    random_access = read_frames(videos[ext], wanted, info)
    assert random_access.shape == (7, 64, 96, 3) and random_access.dtype == np.uint8
    assert indices_of(random_access) == wanted
    np.testing.assert_array_equal(random_access, sequential[wanted])


def test_late_frame_is_reached_by_seeking_not_by_decoding_from_the_start(videos):
    info = probe_video(videos["long"])
    assert info.frame_count == 600
    stats = ReadStats()
    frames = read_frames(videos["long"], [590], info, stats=stats)
    assert indices_of(frames) == [590]
    # Keyframes every 60 frames: decoding starts at 540, so at most ~51 frames go through the decoder (not 591).
    assert stats.first_decoded_index == [540]
    assert stats.decoded <= 60
    # Two pairs far apart: two seeks, each decoding less than a GOP.
    stats = ReadStats()
    frames = read_frames(videos["long"], [100, 115, 500, 530], info, stats=stats)
    assert indices_of(frames) == [100, 115, 500, 530]
    assert stats.seeks == 2 and stats.decoded <= 2 * 60


@pytest.mark.parametrize(("written", "rotation"), [(90, 90), (180, 180), (-90, 270)])
def test_rotation_from_the_display_matrix(tmp_path, written, rotation):
    path = write_video(tmp_path / "rot.mov", 20, rotation=written)
    info = probe_video(path)
    # Stored 96x64 landscape; a quarter-turn display matrix makes the upright frames 64 wide, 96 high.
    assert info.rotation == rotation
    assert (info.width, info.height) == ((96, 64) if rotation == 180 else (64, 96))
    frames = read_frames(path, [4, 11], info)
    assert frames.shape == (2, info.height, info.width, 3)
    # Turning back (clockwise by `rotation`) recovers the code, so frames were turned counter-clockwise by it, as
    # FFmpeg's autorotate does for a display matrix of that angle.
    assert indices_of(frames, rotation) == [4, 11]


def test_odd_sizes(tmp_path):
    path = write_video(tmp_path / "odd.mp4", 30, size=(63, 95), pix_fmt="yuv444p")
    info = probe_video(path)
    assert (info.width, info.height) == (95, 63)
    frames = read_frames(path, [29, 0, 13], info)
    assert frames.shape == (3, 63, 95, 3)
    assert indices_of(frames) == [29, 0, 13]


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_variable_frame_rate_maps_indices_to_the_nearest_timestamp(tmp_path, ext):
    rng = np.random.default_rng(0)
    times = np.cumsum(np.r_[0.0, rng.choice([1 / 30, 2 / 30, 5 / 30], 59)])
    path = write_video(tmp_path / f"vfr.{ext}", 60, times=times)
    info = probe_video(path)
    wanted = list(range(0, info.frame_count, 3))[::-1]
    got = indices_of(read_frames(path, wanted, info))
    for index, frame_id in zip(wanted, got, strict=True):
        t = index / info.fps
        best = np.abs(times - t).min()
        assert abs(times[frame_id] - t) <= best + 2e-3  # the nearest frame (ties either way)


def test_corrupt_truncated_and_out_of_range(tmp_path, videos):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(VideoDecodeError, match="garbage.mp4"):
        probe_video(garbage)
    # A faststart mp4 cut in half still probes (header first) but its late frames are gone.
    full = write_video(tmp_path / "fs.mp4", 300, gop=30, faststart=True).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full[: len(full) // 2])
    info = probe_video(cut)
    assert indices_of(read_frames(cut, [5], info)) == [5]
    with pytest.raises(VideoDecodeError, match="cut.mp4.*not reached"):
        read_frames(cut, [290], info)
    info = probe_video(videos["mp4"])
    with pytest.raises(VideoDecodeError, match="outside"):
        read_frames(videos["mp4"], [90], info)
    with pytest.raises(VideoDecodeError, match="outside"):
        read_frames(videos["mp4"], [-1], info)
