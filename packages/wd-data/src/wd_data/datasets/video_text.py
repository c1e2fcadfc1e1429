"""Video-caption pairs from a CSV or JSONL manifest in the WebVid layout."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from wd_data.datasets.base import SkippingDataset, check_counts, sample_generator
from wd_data.errors import MediaReadError
from wd_data.transforms import Crop
from wd_data.video_io import probe_video, read_video


@dataclass
class VideoTextConfig:
    """A manifest row names a video by `path` (or `video`), or by WebVid's `videoid` (+ `page_dir`),
    and its caption by `caption` (or WebVid's `name`); relative paths are under `video_root`."""

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


def read_manifest(path: str | Path) -> list[dict[str, str]]:
    """Rows of a .csv (header line) or .jsonl (one object per line) manifest, as string dicts."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as file:
        if path.suffix.lower() == ".csv":
            return [dict(row) for row in csv.DictReader(file)]
        if path.suffix.lower() == ".jsonl":
            return [
                {k: "" if v is None else str(v) for k, v in json.loads(line).items()} for line in file if line.strip()
            ]
    raise ValueError(f"{path}: manifest must be .csv or .jsonl")


def _video_path(row: dict[str, str], root: Path, extension: str, line: int) -> Path:
    relative = row.get("path") or row.get("video")
    if relative:
        return root / relative
    if row.get("videoid"):
        return root / row.get("page_dir", "") / f"{row['videoid']}{extension}"
    raise ValueError(f"manifest row {line} has none of the columns path, video, videoid")


class VideoTextDataset(SkippingDataset):
    """Samples `num_frames` frames from a random start in each video (seeded by seed, epoch and index)."""

    def __init__(self, config: VideoTextConfig) -> None:
        self.config = config
        root = Path(config.video_root) if config.video_root is not None else Path(config.manifest).parent
        rows = read_manifest(config.manifest)
        self.items = [
            (_video_path(row, root, config.video_extension, line), row.get("caption", row.get("name", "")))
            for line, row in enumerate(rows, start=1)
        ]
        if not self.items:
            raise ValueError(f"{config.manifest}: manifest has no rows")

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> dict[str, Any]:
        path, caption = self.items[index]
        config = self.config
        info = probe_video(path)
        step = 1 / config.fps if config.fps else (config.frame_stride or 1) / (info.fps or 1.0)
        period = 1 / info.fps if info.fps else step
        latest_start = info.duration - (config.num_frames - 1) * step - period
        if latest_start < 0:
            raise MediaReadError(f"{path}: {info.duration:.2f} s is shorter than a {config.num_frames}-frame clip")
        generator = sample_generator(config.seed, self.epoch, index)
        start = float(torch.rand((), generator=generator, dtype=torch.float64)) * latest_start
        frames = read_video(
            path,
            config.num_frames,
            frame_stride=config.frame_stride,
            fps=config.fps,
            start=start,
            size=config.size,
            crop=config.crop,
            generator=generator,
        )
        return {
            "frames": torch.from_numpy(frames),
            "caption": caption,
            "actions": None,
            "is_image": False,
            "meta": {"path": str(path), "index": index, "start": start, "seed": config.seed, "epoch": self.epoch},
        }
