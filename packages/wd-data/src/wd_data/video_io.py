"""Read clips from video files by presentation time, and write frames to mp4 or GIF (PyAV, Pillow)."""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from wd_data._atomic import atomic_path
from wd_data.errors import MediaReadError
from wd_data.transforms import Crop, crop_offset, normalize_size, resized_shape

# Encoders tried in order: H.264 plays everywhere; MPEG-4 part 2 ships with every FFmpeg build.
_ENCODERS = ("libx264", "h264", "libopenh264", "mpeg4")
# Frame rates each format stores faithfully: a GIF frame lasts a whole number of centiseconds (at most 65535) and
# players show delays under 2 cs as 10 cs; video time bases here have denominators up to 1001.
FPS_LIMITS = {".gif": (0.01, 50.0)}
DEFAULT_FPS_LIMITS = (0.01, 1000.0)
# Frame times are floats of rational timestamps; this absorbs their rounding when matching a target time.
_TIME_TOLERANCE = 1e-4
# Timestamps are checked on the first frames decoded: B-frame reordering gone wrong shows within a few.
_TIMESTAMP_CHECK_FRAMES = 8


# A file path, or a whole encoded file in memory (e.g. a member of a tar shard).
VideoSource = str | os.PathLike | bytes


def source_name(source: VideoSource) -> str:
    """How errors name a video: its path, or a placeholder for bytes in memory."""
    return "<video bytes>" if isinstance(source, bytes) else os.fspath(source)


@dataclass(frozen=True)
class VideoInfo:
    """What a container says (or its packets show) about its first video stream."""

    width: int
    height: int
    fps: float | None  # average frame rate; None when the container gives none
    duration: float  # seconds from the first frame to the end of the last one


@contextlib.contextmanager
def _open_video(path: VideoSource) -> Iterator[tuple[av.container.InputContainer, av.VideoStream]]:
    """Open a container and its first video stream, turning every FFmpeg failure into MediaReadError."""
    try:
        container = av.open(io.BytesIO(path) if isinstance(path, bytes) else str(path))
    except (av.FFmpegError, OSError) as error:
        raise MediaReadError(f"{source_name(path)}: cannot open ({error})") from error
    with container:
        if not container.streams.video:
            raise MediaReadError(f"{source_name(path)}: has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            yield container, stream
        except av.FFmpegError as error:
            raise MediaReadError(f"{source_name(path)}: cannot decode ({error})") from error


def _origin(stream: av.VideoStream) -> float:
    """Presentation time of the stream's first frame; clip starts are measured from it."""
    return float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0


def _frame_rate(stream: av.VideoStream) -> float | None:
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else None


def probe_video(path: VideoSource) -> VideoInfo:
    """Size, frame rate and duration of a video; scans packets when the container has no duration."""
    with _open_video(path) as (container, stream):
        origin = _origin(stream)
        if stream.duration:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / av.time_base - origin
        else:
            count, end = 0, None
            for packet in container.demux(stream):
                if packet.size:  # size 0 marks the end of the stream
                    count += 1
                    if packet.pts is not None:
                        packet_end = float((packet.pts + (packet.duration or 0)) * packet.time_base)
                        end = packet_end if end is None else max(end, packet_end)
            # Raw streams carry no timestamps: one packet per frame at the nominal rate.
            duration = end - origin if end is not None else count / (_frame_rate(stream) or float("inf"))
        return VideoInfo(stream.codec_context.width, stream.codec_context.height, _frame_rate(stream), duration)


def _timestamped(
    container: av.container.InputContainer, stream: av.VideoStream, start: float
) -> Iterator[tuple[float, av.VideoFrame]] | None:
    """(seconds from the stream origin, frame) in presentation order from the keyframe at or before `start`,
    or None when the seek fails or lands past `start`, or the first frames' timestamps are missing or unordered."""
    origin = _origin(stream)
    if start > 0:
        try:
            container.seek(int((origin + start) / stream.time_base), stream=stream, backward=True)
        except av.FFmpegError:
            return None
    decoded = container.decode(stream)
    head = list(itertools.islice(decoded, _TIMESTAMP_CHECK_FRAMES))
    times = [frame.time for frame in head]
    if not head or None in times or any(later <= earlier for earlier, later in itertools.pairwise(times)):
        return None
    if start > 0 and times[0] - origin > start + _TIME_TOLERANCE:
        return None

    def checked() -> Iterator[tuple[float, av.VideoFrame]]:
        previous = -np.inf
        for frame in itertools.chain(head, decoded):
            if frame.time is None or frame.time <= previous:
                raise MediaReadError(f"{container.name}: frame timestamps missing or out of order mid-stream")
            previous = frame.time
            yield frame.time - origin, frame

    return checked()


@contextlib.contextmanager
def _frames_from(
    path: VideoSource, start: float
) -> Iterator[tuple[av.VideoStream, Iterator[tuple[float, av.VideoFrame]]]]:
    """Open a video; yield its stream and (seconds from the stream origin, frame) pairs beginning at or before
    `start`. Seeks when that works, else decodes from the beginning; when timestamps are unusable (raw
    streams, H.264 with B-frames in AVI) counts frames at the nominal rate instead."""
    for seek_to in (start, 0.0) if start > 0 else (0.0,):
        with _open_video(path) as (container, stream):
            frames = _timestamped(container, stream, seek_to)
            if frames is not None:
                yield stream, frames
                return
    with _open_video(path) as (container, stream):
        rate = _frame_rate(stream)
        if rate is None:
            raise MediaReadError(f"{source_name(path)}: neither usable timestamps nor a frame rate")
        yield stream, ((index / rate, frame) for index, frame in enumerate(container.decode(stream)))


class _FrameConverter:
    """Converts decoded frames to RGB arrays resized to cover `size` and cropped to it (same window every frame)."""

    def __init__(self, size: tuple[int, int] | None, crop: Crop, generator: torch.Generator | None) -> None:
        self.size, self.crop, self.generator = size, crop, generator
        self.geometry: tuple[int, int, int, int] | None = None  # resized h, w and crop y, x

    def __call__(self, frame: av.VideoFrame) -> np.ndarray:
        if self.size is None:
            return frame.to_ndarray(format="rgb24")
        if self.geometry is None:
            resized = resized_shape((frame.height, frame.width), self.size)
            self.geometry = (*resized, *crop_offset(resized, self.size, self.crop, self.generator))
        resized_h, resized_w, y, x = self.geometry
        # swscale resizes during the colour conversion; its bilinear filter widens when shrinking, so no aliasing.
        rgb = frame.to_ndarray(width=resized_w, height=resized_h, format="rgb24", interpolation="BILINEAR")
        return np.ascontiguousarray(rgb[y : y + self.size[0], x : x + self.size[1]])


def read_video(
    path: VideoSource,
    num_frames: int,
    *,
    frame_stride: int | None = None,
    fps: float | None = None,
    start: float = 0.0,
    size: int | tuple[int, int] | None = None,
    crop: Crop = "center",
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """Read `num_frames` frames starting `start` s in, one every `frame_stride` source frames or at `fps`.

    `path` is a file or the encoded file's bytes. Frames are picked by presentation time (the frame on screen
    at each target time), resized so the short side covers `size` (int: square, or (H, W)) and cropped to it.
    Returns uint8 (N, H, W, 3).
    Raises MediaReadError for unreadable files and clips that run past the end of the video.
    """
    if not isinstance(num_frames, int | np.integer) or num_frames < 1:
        raise ValueError(f"num_frames must be an int >= 1, got {num_frames!r}")
    if frame_stride is not None and fps is not None:
        raise ValueError("give frame_stride or fps, not both")
    if frame_stride is not None and (not isinstance(frame_stride, int | np.integer) or frame_stride < 1):
        raise ValueError(f"frame_stride must be an int >= 1, got {frame_stride!r}")
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be finite and > 0, got {fps}")
    if not (math.isfinite(start) and start >= 0):
        raise ValueError(f"start must be finite and >= 0 seconds, got {start}")
    convert = _FrameConverter(normalize_size(size), crop, generator)
    with _frames_from(path, start) as (stream, frames):
        if fps is None:
            source_rate = _frame_rate(stream)
            if source_rate is None:
                raise MediaReadError(
                    f"{source_name(path)}: no frame rate in the container; pass fps= instead of frame_stride")
            step = (frame_stride or 1) / source_rate
        else:
            step = 1.0 / fps
        targets = start + step * np.arange(num_frames)
        picked: list[np.ndarray] = []
        shown: tuple[float, av.VideoFrame] | None = None  # the last frame whose time has come
        shown_array: np.ndarray | None = None
        for frame_time, frame in frames:
            while len(picked) < num_frames and frame_time > targets[len(picked)] + _TIME_TOLERANCE:
                # The target time precedes this frame, so the frame on screen then is the one before it
                # (or this one, when the target precedes the very first frame).
                if shown_array is None:
                    shown_array = convert(shown[1] if shown is not None else frame)
                picked.append(shown_array)
            if len(picked) == num_frames:
                break
            shown, shown_array = (frame_time, frame), None
        if len(picked) < num_frames:
            # The last frame stays on screen for one source frame period after its timestamp.
            period = 1 / (_frame_rate(stream) or 1 / step)
            if shown is None or targets[-1] >= shown[0] + period - _TIME_TOLERANCE:
                end = "has no frames" if shown is None else f"ends at {shown[0] + period:.3f} s"
                raise MediaReadError(f"{source_name(path)}: video {end}; the clip needs a frame at {targets[-1]:.3f} s")
            picked.extend([convert(shown[1])] * (num_frames - len(picked)))
    return np.stack(picked)


def iter_frames(
    path: VideoSource, start: float = 0.0, end: float | None = None, size: int | tuple[int, int] | None = None
) -> Iterator[tuple[float, np.ndarray]]:
    """Yield (seconds from the video start, uint8 (H, W, 3)) for every frame shown in [start, end)."""
    convert = _FrameConverter(normalize_size(size), "center", None)
    with _frames_from(path, start) as (_, frames):
        for frame_time, frame in frames:
            if end is not None and frame_time >= end - _TIME_TOLERANCE:
                break
            if frame_time >= start - _TIME_TOLERANCE:
                yield frame_time, convert(frame)


@functools.cache
def _video_encoder() -> str:
    for name in _ENCODERS:
        if name in av.codecs_available:
            with contextlib.suppress(av.FFmpegError, ValueError):
                av.Codec(name, "w")
                return name
    raise RuntimeError(f"this FFmpeg build has none of the video encoders {_ENCODERS}")


def _as_frames(frames: np.ndarray | torch.Tensor | Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Check and yield uint8 (H, W, 3) frames, all of one size."""
    if isinstance(frames, torch.Tensor):
        frames = frames.cpu().numpy()
    shape = None
    for frame in frames:
        frame = np.asarray(frame)
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"frames must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
        if shape is not None and frame.shape != shape:
            raise ValueError(f"all frames must have one size: {shape} then {frame.shape}")
        shape = frame.shape
        yield frame


def _pad_to_even(frame: np.ndarray) -> np.ndarray:
    """4:2:0 chroma needs even sizes: repeat the last row/column rather than drop one."""
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    return np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge") if pad_h or pad_w else frame


def _write_with_pyav(path: str, frames: Iterator[np.ndarray], fps: float) -> None:
    unsupported = f"cannot write H.264/MPEG-4 video to a {Path(path).suffix!r} file; use .mp4, .mkv or .gif"
    try:
        container = av.open(path, "w")
    except (ValueError, av.FFmpegError) as error:
        raise ValueError(f"{unsupported} ({error})") from error
    with container:
        stream = None
        for frame in frames:
            frame = _pad_to_even(frame)
            if stream is None:
                try:
                    stream = container.add_stream(_video_encoder(), rate=Fraction(fps).limit_denominator(1001))
                except (ValueError, av.FFmpegError) as error:
                    raise ValueError(f"{unsupported} ({error})") from error
                stream.pix_fmt = "yuv420p"
                stream.height, stream.width = frame.shape[:2]
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        if stream is None:
            raise ValueError("write_video needs at least one frame")
        container.mux(stream.encode(None))


def _write_gif(path: str, frames: Iterator[np.ndarray], fps: float) -> None:
    # Pillow builds an adaptive palette per frame; FFmpeg's gif encoder would need a palette filter graph.
    images = (Image.fromarray(frame) for frame in frames)
    first = next(images, None)
    if first is None:
        raise ValueError("write_video needs at least one frame")
    first.save(path, format="GIF", save_all=True, append_images=images, duration=round(1000 / fps), loop=0)


def check_video_fps(path: str | os.PathLike, fps: float) -> None:
    """ValueError unless `path` has a suffix (it picks the format) and `fps` is a rate that format stores
    faithfully (`FPS_LIMITS`); `write_video` checks this first, callers can check before any work."""
    suffix = Path(path).suffix.lower()
    if not suffix:
        raise ValueError(f"{path}: the file suffix picks the format; use .mp4, .mkv or .gif")
    low, high = FPS_LIMITS.get(suffix, DEFAULT_FPS_LIMITS)
    if not (math.isfinite(fps) and low <= fps <= high):
        raise ValueError(f"{path}: fps must be finite and in [{low:g}, {high:g}] for a {suffix} file, got {fps}")


def write_video(path: str | os.PathLike, frames: np.ndarray | torch.Tensor | Iterable[np.ndarray], fps: float) -> Path:
    """Write uint8 (N, H, W, 3) frames (or an iterable of (H, W, 3)) to .gif, or .mp4/.mkv/... as H.264 yuv420p.

    Odd sizes are padded to even for 4:2:0 video; the file appears only once complete. Returns the path.
    A GIF stores a run of identical frames once, shown for their total duration (Pillow merges them), so it
    plays the same but may read back with fewer frames.
    """
    check_video_fps(path, fps)
    suffix = Path(path).suffix.lower()
    writer = _write_gif if suffix == ".gif" else _write_with_pyav
    with atomic_path(path) as temporary:
        writer(temporary, _as_frames(frames), fps)
    return Path(path)
