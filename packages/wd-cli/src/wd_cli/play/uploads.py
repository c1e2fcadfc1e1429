"""Images and videos uploaded from the page: size limits checked before anything is decoded, frames kept
small, and kept per tab in memory (a bounded store) rather than on disk."""

from __future__ import annotations

import io
import itertools
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError
from wd_data import iter_frames, probe_video

# What a malformed file raises from Pillow's and FFmpeg's decoders varies (OSError, ValueError, SyntaxError from
# a bad PNG chunk, struct.error, MediaReadError, ...): any of them means "not a file we can read".
_UNREADABLE = "cannot read this file as an image or a video"


class UploadError(ValueError):
    """An upload the page is told about in one line (too large, unreadable)."""


@dataclass(frozen=True)
class UploadLimits:
    """Checked before decoding: the file's bytes and a frame's pixels (from its header); then frames read."""

    max_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 4096 * 4096  # per frame
    max_frames: int = 64

    def __post_init__(self) -> None:
        if min(self.max_bytes, self.max_pixels, self.max_frames) < 1:
            raise ValueError(f"upload limits must be >= 1, got {self}")


def _check_pixels(width: int, height: int, limits: UploadLimits) -> None:
    if width * height > limits.max_pixels:
        raise UploadError(f"the frames are {width}x{height} pixels, more than the {limits.max_pixels} pixels a frame "
                          "may have (--max-upload-pixels)")


def _shrunk(image: Image.Image, cover: tuple[int, int]) -> np.ndarray:
    """RGB uint8 (H', W', 3): `image` scaled down (never up, aspect kept) to the smallest size that still covers
    `cover` (height, width), so fitting it to the model later needs no larger frame."""
    image = image.convert("RGB")
    scale = min(1.0, max(cover[0] / image.height, cover[1] / image.width))
    if scale < 1:
        size = (max(cover[1], round(image.width * scale)), max(cover[0], round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(image)


def _image_frames(data: bytes, limits: UploadLimits, cover: tuple[int, int]) -> np.ndarray | None:
    """The frames of an image (an animated GIF or PNG gives several), or None when Pillow does not know the
    format."""
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
    except UnidentifiedImageError:
        return None
    except Image.DecompressionBombError:  # Pillow's own ceiling, far above ours
        raise UploadError(f"the frames are more than the {limits.max_pixels} pixels a frame may have "
                          "(--max-upload-pixels)") from None
    with image:
        _check_pixels(image.width, image.height, limits)
        frames = [_shrunk(frame, cover) for frame in itertools.islice(ImageSequence.Iterator(image), limits.max_frames)]
    return np.stack(frames)


def _video_frames(path: Path, limits: UploadLimits, cover: tuple[int, int]) -> np.ndarray:
    info = probe_video(path)  # the stream's header
    _check_pixels(info.width, info.height, limits)
    frames = [_shrunk(Image.fromarray(frame), cover)
              for _, frame in itertools.islice(iter_frames(path), limits.max_frames)]
    if not frames:
        raise UploadError("the video has no frames")
    return np.stack(frames)


def decode_upload(data: bytes, limits: UploadLimits, cover: tuple[int, int], scratch: Path) -> np.ndarray:
    """An uploaded image or video -> uint8 (M, H, W, 3), M <= limits.max_frames, scaled down to just cover `cover`.
    A video is read from the file `scratch` (deleted after); UploadError says what is wrong in one line."""
    if len(data) > limits.max_bytes:
        raise UploadError(f"the file is {len(data) / 2**20:.1f} MiB, more than the {limits.max_bytes / 2**20:.1f} "
                          "MiB an upload may have (--max-upload-mb)")
    if not data:
        raise UploadError("the file is empty")
    try:
        frames = _image_frames(data, limits, cover)
        if frames is not None:
            return frames
        scratch.parent.mkdir(parents=True, exist_ok=True)
        scratch.write_bytes(data)
        try:
            return _video_frames(scratch, limits, cover)
        finally:
            scratch.unlink(missing_ok=True)
    except UploadError:
        raise
    except Exception:  # see _UNREADABLE
        raise UploadError(_UNREADABLE) from None


@dataclass(frozen=True)
class Upload:
    """Frames uint8 (M, H, W, 3) a tab uploaded."""

    id: str
    tab: str
    frames: np.ndarray


class UploadStore:
    """Uploads by id, for the tab that made them; the oldest leave first once they hold more than `max_bytes`."""

    def __init__(self, max_bytes: int = 512 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._uploads: OrderedDict[str, Upload] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, tab: str, frames: np.ndarray) -> Upload:
        upload = Upload(secrets.token_urlsafe(12), tab, frames)
        with self._lock:
            self._uploads[upload.id] = upload
            held = sum(kept.frames.nbytes for kept in self._uploads.values())
            while len(self._uploads) > 1 and held > self.max_bytes:
                held -= self._uploads.popitem(last=False)[1].frames.nbytes
        return upload

    def get(self, tab: str, upload_id: str) -> np.ndarray:
        """The frames of `upload_id`, if `tab` made it; UploadError otherwise."""
        with self._lock:
            upload = self._uploads.get(upload_id)
        if upload is None or upload.tab != tab:
            raise UploadError("that upload is gone (the server keeps the newest ones): upload the file again")
        return upload.frames

    def drop_tab(self, tab: str) -> None:
        """Forget every upload of `tab` (it closed)."""
        with self._lock:
            for upload_id in [key for key, upload in self._uploads.items() if upload.tab == tab]:
                del self._uploads[upload_id]
