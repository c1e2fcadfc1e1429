"""Video-caption pairs: a CSV or JSONL manifest in the WebVid layout, or a folder of videos with sidecar captions."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wd_data.datasets.base import SkipLog, SkippingDataset, check_counts, sample_generator
from wd_data.errors import BadSampleError, MediaReadError
from wd_data.transforms import Crop
from wd_data.video_io import VideoSource, probe_video, read_video, source_name

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov")
PATH_COLUMNS = ("path", "video", "videoid")
CAPTION_COLUMNS = ("caption", "name")


@dataclass
class VideoTextConfig:
    """`manifest`: a .csv or .jsonl file whose rows name a video by `path` (or `video`), or by WebVid's
    `videoid` (+ `page_dir`), and its caption by `caption` (or WebVid's `name`), relative paths under
    `video_root`; or a folder of videos, each captioned by a `name.txt` beside it (no file: no caption)."""

    manifest: str | Path
    video_root: str | Path | None = None  # None: the manifest's folder
    num_frames: int = 16
    size: int | tuple[int, int] | None = 256
    frame_stride: int | None = None  # source frames between picked frames; None with fps None: every frame
    fps: float | None = None
    crop: Crop = "center"
    seed: int = 0
    video_extension: str = ".mp4"  # for rows that give a videoid

    def __post_init__(self) -> None:
        check_counts(num_frames=self.num_frames, frame_stride=self.frame_stride)


def _csv_rows(path: Path, lines: list[bytes], skips: SkipLog) -> list[tuple[int, dict[str, Any]]]:
    """One row per line (a quoted field may not span lines, so one stray quote spoils one row, not the rest)."""
    numbered = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    if not numbered:
        return []
    header = next(csv.reader([numbered[0][1].decode("utf-8", errors="replace").lstrip("\ufeff")]))
    if not set(PATH_COLUMNS) & set(header):
        raise ValueError(f"{path}: the header has none of the columns {', '.join(PATH_COLUMNS)}")
    if not set(CAPTION_COLUMNS) & set(header):
        raise ValueError(f"{path}: the header has no caption column ({' or '.join(CAPTION_COLUMNS)})")
    rows = []
    for number, line in numbered[1:]:
        try:
            (fields,) = csv.reader([line.decode("utf-8")], strict=True)
        except (UnicodeDecodeError, csv.Error) as error:
            skips.skip(f"{path}:{number}", f"malformed CSV row ({error})")
            continue
        if len(fields) != len(header):
            skips.skip(f"{path}:{number}", f"{len(fields)} fields, the header has {len(header)}")
            continue
        rows.append((number, dict(zip(header, fields, strict=True))))
    return rows


def _jsonl_rows(path: Path, lines: list[bytes], skips: SkipLog) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            skips.skip(f"{path}:{number}", f"not a JSON line ({error})")
            continue
        if not isinstance(row, dict):
            skips.skip(f"{path}:{number}", f"a {type(row).__name__}, not an object")
            continue
        rows.append((number, row))
    return rows


def read_manifest(path: str | Path, skips: SkipLog | None = None) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) of each readable row of a .csv (header line) or .jsonl (one object per line) manifest;
    unreadable rows (stray quotes, wrong field counts, bytes that are not UTF-8, lines that are not objects)
    are recorded in `skips` and left out."""
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".jsonl"):
        raise ValueError(f"{path}: manifest must be .csv or .jsonl")
    lines = path.read_bytes().splitlines()
    read = _csv_rows if path.suffix.lower() == ".csv" else _jsonl_rows
    return read(path, lines, skips if skips is not None else SkipLog())


def _text(row: dict[str, Any], columns: tuple[str, ...]) -> str | None:
    """The first of `columns` in the row as a string (ids may be numbers); None when absent; BadSampleError when
    it is anything else (null, a list, ...)."""
    for column in columns:
        if column in row:
            value = row[column]
            if isinstance(value, str):
                return value
            if isinstance(value, int) and not isinstance(value, bool) and column not in CAPTION_COLUMNS:
                return str(value)
            raise BadSampleError(f"{column} is {value!r}, not a string")
    return None


def _row_item(row: dict[str, Any], root: Path, extension: str) -> tuple[Path, str]:
    """(video path, caption) of a manifest row; BadSampleError for a row without a video or a caption."""
    caption = _text(row, CAPTION_COLUMNS)
    if caption is None:
        raise BadSampleError(f"no caption ({' or '.join(CAPTION_COLUMNS)})")
    relative = _text(row, ("path", "video"))
    if relative:
        return root / relative, caption
    video_id = _text(row, ("videoid",))
    if video_id:
        return root / (_text(row, ("page_dir",)) or "") / f"{video_id}{extension}", caption
    raise BadSampleError(f"none of the columns {', '.join(PATH_COLUMNS)}")


def read_caption_file(path: Path) -> str:
    """The caption in a sidecar .txt file ("" when there is none); BadSampleError when it is not UTF-8 text."""
    if not path.is_file():
        return ""
    try:
        return path.read_bytes().decode("utf-8").strip()
    except UnicodeDecodeError as error:
        raise BadSampleError(f"{path}: caption is not UTF-8 ({error})") from None


def random_clip(
    source: VideoSource,
    num_frames: int,
    generator: torch.Generator,
    *,
    fps: float | None = None,
    frame_stride: int | None = None,
    size: int | tuple[int, int] | None = None,
    crop: Crop = "center",
) -> tuple[np.ndarray, float]:
    """(uint8 (N, H, W, 3) frames, start s) of a clip from a uniformly drawn start; MediaReadError when the video
    is unreadable or shorter than the clip."""
    info = probe_video(source)
    step = 1 / fps if fps else (frame_stride or 1) / (info.fps or 1.0)
    period = 1 / info.fps if info.fps else step
    latest_start = info.duration - (num_frames - 1) * step - period
    if latest_start < 0:
        raise MediaReadError(f"{source_name(source)}: {info.duration:.2f} s is shorter than a {num_frames}-frame clip")
    start = float(torch.rand((), generator=generator, dtype=torch.float64)) * latest_start
    frames = read_video(source, num_frames, frame_stride=frame_stride, fps=fps, start=start, size=size, crop=crop,
                        generator=generator)
    return frames, start


class VideoTextDataset(SkippingDataset):
    """Samples `num_frames` frames from a random start in each video (seeded by seed, epoch and index).

    Manifest rows without a video or caption, or that do not parse, are skipped (counted in `skips`) when the
    dataset is built; a video that cannot be decoded, or a sidecar caption that is not UTF-8, when it is read.
    """

    def __init__(self, config: VideoTextConfig) -> None:
        self.config = config
        source = Path(config.manifest)
        # Each item: (video, caption) from a manifest, or (video, its sidecar caption file) in a folder.
        self.items: list[tuple[Path, str | Path]] = []
        if source.is_dir():
            videos = sorted(path for path in source.rglob("*") if path.suffix.lower() in VIDEO_EXTENSIONS)
            self.items = [(video, video.with_suffix(".txt")) for video in videos]
        else:
            root = Path(config.video_root) if config.video_root is not None else source.parent
            for number, row in read_manifest(source, self.skips):
                try:
                    self.items.append(_row_item(row, root, config.video_extension))
                except BadSampleError as error:
                    self.skips.skip(f"{source}:{number}", error)
        if not self.items:
            found = "videos" if source.is_dir() else "usable rows"
            first = f"; first: {self.skips.reasons[0]}" if self.num_skipped else ""
            raise ValueError(f"{source}: no {found}{first}")

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> dict[str, Any]:
        path, caption = self.items[index]
        config = self.config
        generator = sample_generator(config.seed, self.epoch, index)
        frames, start = random_clip(path, config.num_frames, generator, fps=config.fps,
                                    frame_stride=config.frame_stride, size=config.size, crop=config.crop)
        return {
            "frames": torch.from_numpy(frames),
            "caption": read_caption_file(caption) if isinstance(caption, Path) else caption,
            "actions": None,
            "is_image": False,
            "meta": {"path": str(path), "index": index, "start": start, "seed": config.seed, "epoch": self.epoch},
        }
