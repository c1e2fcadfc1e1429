"""Inputs of the generation tasks: fit frames and masks to the model's size, read mask and actions files."""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from wd_data import MediaReadError, iter_frames, read_image
from wd_data.transforms import crop_offset, resized_shape

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def _tensor(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A CPU tensor of `array` (numpy arrays are copied: decoded frames are often read-only)."""
    return array.cpu() if isinstance(array, torch.Tensor) else torch.from_numpy(np.array(array))


def _fit(planes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """float (M, C, H, W) -> (M, C, *size): resized (antialiased bilinear) to cover size, centre-cropped."""
    if tuple(planes.shape[-2:]) == tuple(size):
        return planes
    resized = resized_shape(tuple(planes.shape[-2:]), size)
    y, x = crop_offset(resized, size, "center")
    planes = F.interpolate(planes, size=resized, mode="bilinear", antialias=True, align_corners=False)
    return planes[..., y : y + size[0], x : x + size[1]]


def _frames(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (M, H, W, 3) or one image (H, W, 3) -> a uint8 (M, H, W, 3) CPU tensor; ValueError otherwise."""
    frames = _tensor(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
        raise ValueError(f"frames must be uint8 (H, W, 3) or (M, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    return frames


def fit_frames(frames: np.ndarray | torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (M, H, W, 3) or one image (H, W, 3) -> uint8 (M, *size, 3) on the CPU, resized and centre-cropped
    like `wd_data.read_video` does (a no-op at the right size)."""
    frames = _frames(frames)
    if tuple(frames.shape[1:3]) == tuple(size):
        return frames
    planes = _fit(frames.permute(0, 3, 1, 2).float(), size)  # (M, 3, H, W)
    return planes.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def fit_inside(
    frames: np.ndarray | torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """uint8 (M, H, W, 3) or (H, W, 3) -> (uint8 (M, *size, 3), box): the frames scaled to fit inside `size`
    (aspect kept) and centred, the rest filled by replicating their edge pixels; box = (top, left, bottom, right)
    where they lie."""
    frames = _frames(frames)
    height, width = frames.shape[1:3]
    scale = min(size[0] / height, size[1] / width)
    inner = (min(size[0], max(1, round(height * scale))), min(size[1], max(1, round(width * scale))))
    top, left = (size[0] - inner[0]) // 2, (size[1] - inner[1]) // 2
    planes = fit_frames(frames, inner).permute(0, 3, 1, 2).float()
    padding = (left, size[1] - inner[1] - left, top, size[0] - inner[0] - top)
    canvas = F.pad(planes, padding, mode="replicate").to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    return canvas, (top, left, top + inner[0], left + inner[1])


def fit_mask(mask: np.ndarray | torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """bool (H, W) or (M, H, W) -> bool (..., *size) with the frames' geometry; a pixel is in the region if the
    resized mask covers it at all, so the region never shrinks."""
    mask = _tensor(mask)
    if mask.dtype != torch.bool or mask.ndim not in (2, 3):
        raise ValueError(f"mask must be bool (H, W) or (M, H, W), got {mask.dtype} {tuple(mask.shape)}")
    planes = mask.reshape(-1, 1, *mask.shape[-2:]).float()
    return (_fit(planes, size) > 0).reshape(*mask.shape[:-2], *size)


def read_frames(path: str | os.PathLike, max_frames: int | None = None) -> np.ndarray:
    """The first `max_frames` (all if None) frames of a video file -> uint8 (M, H, W, 3); MediaReadError when
    unreadable or empty."""
    frames = [frame for _, frame in itertools.islice(iter_frames(path), max_frames)]
    if not frames:
        raise MediaReadError(f"{path}: has no frames")
    return np.stack(frames)


def read_mask(path: str | os.PathLike, max_frames: int | None = None) -> np.ndarray:
    """A mask image (-> bool (H, W)) or mask video (-> bool (M, H, W)): True where any channel is > 127
    (white = regenerate)."""
    path = Path(path)
    pixels = read_image(path) if path.suffix.lower() in IMAGE_SUFFIXES else read_frames(path, max_frames)
    return (pixels > 127).any(axis=-1)


def read_actions(path: str | os.PathLike) -> np.ndarray:
    """Actions, one row per frame -> float32 (M, A): a CSV file (an optional header line, then numbers) or JSON
    (a list of rows, or {"actions": rows}). ValueError naming the file when it is not that."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise FileNotFoundError(f"cannot read actions file {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: actions must be rows of numbers, one row per frame ({error})") from None
    return parse_actions(text, path.suffix.lower() == ".json", str(path))


def parse_actions(text: str, is_json: bool = False, name: str = "actions") -> np.ndarray:
    """`read_actions` on the text of a file: CSV rows (an optional header line), or JSON when `is_json`; errors
    name `name`."""
    try:
        if is_json:
            rows = json.loads(text)
            rows = rows.get("actions") if isinstance(rows, dict) else rows
        else:
            rows = [row for row in csv.reader(io.StringIO(text)) if row]
            if rows and not _numeric(rows[0]):
                rows = rows[1:]  # a header line
        actions = np.asarray(rows, dtype=np.float32)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{name}: actions must be rows of numbers, one row per frame ({error})") from None
    if actions.ndim != 2 or not actions.size:
        raise ValueError(f"{name}: actions must be a non-empty table (frames, A), got shape {actions.shape}")
    if not np.isfinite(actions).all():
        raise ValueError(f"{name}: actions must be finite numbers")
    return actions


def _numeric(row: list[str]) -> bool:
    try:
        [float(value) for value in row]
    except ValueError:
        return False
    return True
