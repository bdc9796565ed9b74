"""Reading frames from video files with PyAV: probing, and random access to frame indices by seeking.

Frame index i of a video means "the frame shown at time i / fps" with fps the stream's average rate; for
constant-rate files this is exactly the i-th decoded frame, for variable-rate files it is the decoded frame whose
timestamp is nearest to i / fps. Frames are returned upright: the display matrix (or the legacy `rotate` tag) is
applied, so width/height in `VideoInfo` are those of the returned frames.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from typing import Any

import av
import numpy as np

__all__ = ["ReadStats", "VideoDecodeError", "VideoInfo", "probe_video", "read_frames"]


class VideoDecodeError(RuntimeError):
    """A video cannot be opened or decoded, or a requested frame is not in it; the message names the file."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class VideoInfo:
    """What a probe learns about one video; JSON-serialisable via `to_dict` / `from_dict` (the manifest)."""

    path: str
    frame_count: int
    fps: float  # average frame rate of the video stream
    width: int  # of upright frames (after rotation)
    height: int
    duration_s: float
    rotation: int = 0  # degrees counter-clockwise applied to decoded frames to make them upright: 0/90/180/270
    size_bytes: int = 0
    codec: str = ""
    frame_count_source: str = "container"  # container | duration | packets: how frame_count was obtained

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VideoInfo:
        return cls(**d)


@dataclass
class ReadStats:
    """Work done by one `read_frames` call (for tests and benchmarks)."""

    decoded: int = 0  # frames that went through the decoder
    seeks: int = 0
    converted: int = 0  # frames converted to RGB (the requested ones)
    first_decoded_index: list[int] = field(default_factory=list)  # index of the first frame after each seek


# Seek instead of decoding forward when the next wanted frame is more than this many seconds ahead; a seek costs
# decoding from the previous keyframe (typically 0.5-2 s of video), so shorter gaps are cheaper to decode through.
_SEEK_AHEAD_S = 1.0
# A frame is accepted for index i if its timestamp is within this many frame durations of i / fps (EOF slack for
# durations that round up, and for variable-rate gaps).
_EOF_SLACK_FRAMES = 2.0
# Timestamps equal up to this fraction of a frame are the same instant (rounding in the container's time base).
_SAME_TIME_FRAMES = 0.01


def _open(path: str | os.PathLike[str]) -> av.container.InputContainer:
    try:
        return av.open(str(path), mode="r")
    except (av.FFmpegError, OSError, ValueError) as e:
        raise VideoDecodeError(path, f"cannot open: {e}") from e


def _video_stream(container: av.container.InputContainer, path: str | os.PathLike[str]) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise VideoDecodeError(path, "no video stream")
    return container.streams.video[0]


def _normalise_rotation(degrees_ccw: float) -> int:
    # Only quarter turns are applied; arbitrary angles are rounded to the nearest quarter turn.
    return int(round(degrees_ccw / 90.0)) % 4 * 90


def _stream_fps(stream: av.video.stream.VideoStream) -> float:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return float(rate)
    return 0.0


def _duration_s(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float:
    if stream.duration is not None and stream.duration > 0 and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return 0.0


def probe_video(path: str | os.PathLike[str]) -> VideoInfo:
    """Read a video's header (and its first frame, to validate it and read the display matrix).

    Frame count: from the container when it stores one, else duration * fps, else by demuxing (not decoding)
    every packet. Raises `VideoDecodeError` for anything unreadable.
    """
    size = os.path.getsize(path) if os.path.exists(path) else 0
    with _open(path) as container:
        stream = _video_stream(container, path)
        fps = _stream_fps(stream)
        duration = _duration_s(container, stream)
        # PyAV 18 exposes the display matrix on decoded frames only (`frame.rotation`, counter-clockwise); files
        # from old muxers may still carry a `rotate` tag (clockwise degrees).
        stream.codec_context.thread_count = 1  # one frame: starting a decoder thread pool costs more than it saves
        try:
            first = next(container.decode(stream), None)
        except av.FFmpegError as e:
            raise VideoDecodeError(path, f"cannot decode the first frame: {e}") from e
        if first is None:
            raise VideoDecodeError(path, "no decodable frame")
        rotation = _normalise_rotation(first.rotation)
        if rotation == 0 and "rotate" in stream.metadata:
            try:
                rotation = _normalise_rotation(-float(stream.metadata["rotate"]))
            except ValueError:
                pass
        width, height = first.width, first.height
        codec = stream.codec_context.name

        count_source = "container"
        frame_count = int(stream.frames or 0)
        if frame_count <= 0 and duration > 0 and fps > 0:
            frame_count, count_source = int(round(duration * fps)), "duration"
    if frame_count <= 0:
        frame_count, count_source = _count_packets(path), "packets"
        if fps <= 0 and duration > 0:
            fps = frame_count / duration
    if fps <= 0:
        raise VideoDecodeError(path, "unknown frame rate")
    if duration <= 0:
        duration = frame_count / fps
    if rotation in (90, 270):
        width, height = height, width
    return VideoInfo(
        path=str(path),
        frame_count=frame_count,
        fps=fps,
        width=width,
        height=height,
        duration_s=duration,
        rotation=rotation,
        size_bytes=size,
        codec=codec,
        frame_count_source=count_source,
    )


def _count_packets(path: str | os.PathLike[str]) -> int:
    with _open(path) as container:
        stream = _video_stream(container, path)
        try:
            return sum(1 for p in container.demux(stream) if p.size > 0)
        except av.FFmpegError as e:
            raise VideoDecodeError(path, f"cannot demux: {e}") from e


def _to_rgb(frame: av.VideoFrame, rotation: int) -> np.ndarray:
    rgb = frame.to_ndarray(format="rgb24")
    if rotation:
        rgb = np.rot90(rgb, k=rotation // 90)  # np.rot90 turns counter-clockwise, like the display matrix
    return np.ascontiguousarray(rgb)


def read_frames(
    path: str | os.PathLike[str],
    indices: list[int] | np.ndarray,
    info: VideoInfo | None = None,
    *,
    stats: ReadStats | None = None,
    threads: int = 1,
) -> np.ndarray:
    """Decode the frames at `indices` (any order, repeats allowed): (len(indices), H, W, 3) uint8 RGB, upright.

    Seeks to the keyframe before each group of nearby wanted frames and decodes forward from there; never decodes
    from the start of the file to reach a late frame. `info` saves a probe; `threads` is the decoder's thread
    count (1 in DataLoader workers, which are already parallel; 0 = FFmpeg's choice).
    Raises `VideoDecodeError` for corrupt/truncated files or indices outside the video.
    """
    info = info or probe_video(path)
    stats = stats if stats is not None else ReadStats()
    wanted = np.asarray(indices, dtype=np.int64).reshape(-1)
    if wanted.size == 0:
        return np.zeros((0, info.height, info.width, 3), dtype=np.uint8)
    if wanted.min() < 0 or wanted.max() >= info.frame_count:
        raise VideoDecodeError(path, f"frame indices {wanted.min()}..{wanted.max()} outside 0..{info.frame_count - 1}")
    unique = np.unique(wanted)  # sorted
    got: dict[int, np.ndarray] = {}
    with _open(path) as container:
        stream = _video_stream(container, path)
        stream.codec_context.thread_count = threads
        if threads != 1:
            stream.codec_context.thread_type = "AUTO"
        try:
            _decode_sorted(container, stream, [int(i) for i in unique], info, got, stats)
        except (av.FFmpegError, ValueError) as e:  # ValueError: a pixel format PyAV cannot convert
            raise VideoDecodeError(path, f"decode error: {e}") from e
    missing = [int(i) for i in unique if int(i) not in got]
    if missing:
        raise VideoDecodeError(path, f"frames {missing[:5]} not reached (truncated or corrupt file?)")
    shapes = {got[int(i)].shape for i in unique}
    if len(shapes) > 1:
        raise VideoDecodeError(path, f"frame size changes within the video: {sorted(shapes)}")
    return np.stack([got[int(i)] for i in wanted])


def _decode_sorted(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    unique: list[int],
    info: VideoInfo,
    got: dict[int, np.ndarray],
    stats: ReadStats,
) -> None:
    """Fill `got[i]` for each sorted index, seeking only across gaps longer than `_SEEK_AHEAD_S`."""
    fps = info.fps
    tb = stream.time_base or Fraction(1, 1)
    start = stream.start_time or 0
    seek_gap = max(1, int(_SEEK_AHEAD_S * fps))
    slack = _EOF_SLACK_FRAMES / fps

    def frame_time(frame: av.VideoFrame) -> float:
        pts = frame.pts if frame.pts is not None else 0
        return float((pts - start) * tb)

    pos = 0  # next wanted index to fill
    frames = None  # live decode iterator
    prev: tuple[float, av.VideoFrame] | None = None  # newest decoded frame (time, frame)
    last_seek_target = -1
    while pos < len(unique):
        target = unique[pos]
        if frames is None or (
            target != last_seek_target and _worth_seeking(stream, start, tb, target / fps, prev[0], seek_gap / fps)
        ):
            # Seek to the keyframe at or before the target timestamp; step further back if the demuxer lands after.
            last_seek_target = target
            back = 0.0
            while True:
                ts = start + int(max(0.0, target / fps - back) / tb)
                container.seek(ts, stream=stream, backward=True, any_frame=False)
                stats.seeks += 1
                frames = container.decode(stream)
                first = next(frames, None)
                if first is None:
                    break
                stats.decoded += 1
                t0 = frame_time(first)
                if t0 <= (target + _SAME_TIME_FRAMES) / fps or ts <= start:
                    break
                back = back * 2 + 1.0
            if first is None:
                return
            prev = (t0, first)
            stats.first_decoded_index.append(int(round(t0 * fps)))
            pos = _emit(unique, pos, prev, None, fps, info.rotation, got, stats)
            continue
        frame = next(frames, None)
        if frame is None:
            # End of stream: the last frame stands for wanted indices within the slack (rounded-up durations).
            while pos < len(unique) and prev is not None and unique[pos] / fps - prev[0] <= slack:
                got[unique[pos]] = _to_rgb(prev[1], info.rotation)
                stats.converted += 1
                pos += 1
            return
        stats.decoded += 1
        cur = (frame_time(frame), frame)
        pos = _emit(unique, pos, prev, cur, fps, info.rotation, got, stats)
        prev = cur


def _worth_seeking(
    stream: av.video.stream.VideoStream, start: int, tb: Fraction, target_s: float, now_s: float, gap_s: float
) -> bool:
    """Seek only when it skips work: the keyframe before the target lies after the current decode position (from
    the container's index when it has one), else when the target is more than `gap_s` ahead."""
    if target_s <= now_s:
        return False
    try:
        entries = stream.index_entries
        if entries is not None and len(entries) > 0:
            i = entries.search_timestamp(start + int(target_s / tb), backward=True)
            if i >= 0:
                return float((entries[i].timestamp - start) * tb) > now_s
    except (av.FFmpegError, AttributeError, IndexError):
        pass
    return target_s - now_s > gap_s


def _emit(
    unique: list[int],
    pos: int,
    prev: tuple[float, av.VideoFrame] | None,
    cur: tuple[float, av.VideoFrame] | None,
    fps: float,
    rotation: int,
    got: dict[int, np.ndarray],
    stats: ReadStats,
) -> int:
    """Assign wanted indices whose time lies at or before the newest decoded frame: the nearer of prev/cur wins."""
    newest = cur if cur is not None else prev
    assert newest is not None
    converted: dict[int, np.ndarray] = {}
    while pos < len(unique):
        t = unique[pos] / fps
        if t > newest[0] + _SAME_TIME_FRAMES / fps:
            break  # not reached yet: a later frame may be nearer
        choice = newest
        if cur is not None and prev is not None and abs(t - prev[0]) <= abs(cur[0] - t):
            choice = prev
        key = id(choice[1])
        if key not in converted:
            converted[key] = _to_rgb(choice[1], rotation)
            stats.converted += 1
        got[unique[pos]] = converted[key]
        pos += 1
    return pos
