"""A source named on the command line (a path, or a world's name) -> the SourceConfig that `wd train` opens."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wd_data.datasets.image_text import IMAGE_EXTENSIONS
from wd_data.datasets.video_text import VIDEO_EXTENSIONS
from wd_data.token_cache import FORMAT, MANIFEST

from wd_cli.train.config import SOURCE_KINDS, SourceConfig
from wd_cli.train.configfile import ConfigError, parse_scalar

WORLDS = ("shapes", "drive")
CURATED_MANIFESTS = ("manifest.jsonl", "manifest.csv")  # what `wd data curate` (or a user) leaves beside clips


def _is_token_cache(folder: Path) -> bool:
    try:
        return json.loads((folder / MANIFEST).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _folder_kind(folder: Path) -> tuple[str, Path]:
    if _is_token_cache(folder):
        return "token_cache", folder
    if any(child.is_dir() and child.name.startswith("v1.0-") for child in folder.iterdir()):
        return "nuscenes", folder
    for name in CURATED_MANIFESTS:
        if (folder / name).is_file():
            return "video_text", folder / name
    suffixes = {path.suffix.lower() for path in folder.rglob("*") if path.is_file()}
    if ".tar" in suffixes:
        return "tar_shards", folder
    if suffixes & set(VIDEO_EXTENSIONS):
        return "video_text", folder
    if suffixes & set(IMAGE_EXTENSIONS):
        return "image_text", folder
    raise ConfigError(f"{folder}: no videos, images, tar shards, manifest, token cache or nuScenes tables found")


def detect_kind(source: str) -> tuple[str, str | None]:
    """(kind, path) of a source: a world's name (no path), a .csv/.jsonl manifest, tar shards (a .tar, a brace
    pattern, a `pipe:` command or a folder of .tar), a token cache, a nuScenes dataroot (it holds v1.0-*/), a
    folder with a curated manifest, of videos (+ sidecar .txt captions) or of images (+ .txt)."""
    path = Path(source)
    if source in WORLDS and not path.exists():
        return source, None
    if source.startswith("pipe:") or "{" in source or path.suffix.lower() == ".tar":
        return "tar_shards", source
    if not path.exists():
        raise ConfigError(f"{source} does not exist (nor is it a world: {', '.join(WORLDS)})")
    if path.is_file():
        if path.suffix.lower() in (".csv", ".jsonl"):
            return "video_text", source
        raise ConfigError(f"{source}: a file source must be a .csv or .jsonl manifest or a .tar shard")
    kind, found = _folder_kind(path)
    return kind, str(found)


def parse_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """("key=value", ...) -> {key: value as TOML reads it, or None for `none` (which TOML cannot say)}."""
    options = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option {pair!r}: expected KEY=VALUE")
        options[key.strip()] = None if text.strip().lower() == "none" else parse_scalar(text.strip())
    return options


def parse_size(text: str) -> tuple[int, int]:
    """"256" or "192x320" -> (H, W)."""
    height, _, width = text.lower().partition("x")
    try:
        size = (int(height), int(width or height))
    except ValueError:
        raise ConfigError(f"--size {text!r}: expected H or HxW, e.g. 256 or 192x320") from None
    if min(size) < 1:
        raise ConfigError(f"--size {text!r}: sides must be >= 1")
    return size


def source_config(source: str, kind: str | None, frames: int | None, size: str | None, fps: float | None,
                  options: tuple[str, ...], max_skip_rate: float) -> SourceConfig:
    """The SourceConfig of SOURCE and the clip flags (--frames, --size HxW, --fps) on top of --option pairs."""
    if kind is not None and kind not in SOURCE_KINDS:
        raise ConfigError(f"--kind {kind!r}: expected one of {', '.join(SOURCE_KINDS)}")
    detected, path = detect_kind(source)
    kind = kind or detected
    path = None if kind in WORLDS else (path or source)
    values = parse_options(options)
    if frames is not None:
        values["num_frames"] = frames
    if size is not None:
        height, width = parse_size(size)
        values.update({"height": height, "width": width} if kind in WORLDS else {"size": [height, width]})
    if fps is not None:
        if kind not in ("video_text", "tar_shards"):
            raise ConfigError(f"--fps: a {kind} source has no frame rate to pick (nuScenes: --option frame_interval)")
        values["fps"] = fps
    if kind == "token_cache" and values:
        raise ConfigError(f"{source} is a token cache: its clips are already tokenized (no --frames/--size/--fps)")
    try:
        return SourceConfig(kind, path, options=values, max_skip_rate=max_skip_rate)
    except ValueError as error:
        raise ConfigError(str(error)) from None
