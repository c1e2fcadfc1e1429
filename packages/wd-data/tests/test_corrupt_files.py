from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest

from wd_data.errors import MediaReadError
from wd_data.image_io import read_image
from wd_data.video_io import probe_video, read_video, write_video


def _audio_only(path):
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        for index in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 16000, index * 1024, Fraction(1, 16000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _make_corrupt(kind, path, good_video):
    data = good_video.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif kind == "zero_bytes":
        path.write_bytes(b"")
    elif kind == "random_bytes":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif kind == "text":
        path.write_text("this is not a video\n" * 20)
    elif kind == "audio_only":
        _audio_only(path)
    elif kind == "missing":
        pass
    return path


KINDS = ["truncated", "zero_bytes", "random_bytes", "text", "audio_only", "missing"]


@pytest.mark.parametrize("kind", KINDS)
def test_unreadable_videos_raise_media_read_error(tmp_path, index_video, kind):
    path = _make_corrupt(kind, tmp_path / f"{kind}.mp4", index_video)
    with pytest.raises(MediaReadError, match=kind):
        read_video(path, 4)
    with pytest.raises(MediaReadError):
        probe_video(path)


def test_truncated_streamable_mp4_raises_once_frames_run_out(tmp_path, index_video):
    # With the index at the front (faststart), a cut file opens but holds only the first frames.
    path = write_video(tmp_path / "fast.mp4", np.random.default_rng(0).integers(0, 256, (30, 48, 64, 3), np.uint8), 10)
    with (
        av.open(str(path)) as source,
        av.open(str(tmp_path / "faststart.mp4"), "w", options={"movflags": "faststart"}) as out,
    ):
        stream = out.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(source.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    data = (tmp_path / "faststart.mp4").read_bytes()
    truncated = tmp_path / "truncated_fast.mp4"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(MediaReadError):
        read_video(truncated, 30)


@pytest.mark.parametrize("kind", ["zero_bytes", "random_bytes", "text", "missing"])
def test_unreadable_images_raise_media_read_error(tmp_path, kind, index_video):
    path = _make_corrupt(kind, tmp_path / f"{kind}.jpg", index_video)
    with pytest.raises(MediaReadError):
        read_image(path)


def test_truncated_jpeg_raises(tmp_path):
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)).save(tmp_path / "a.jpg")
    data = (tmp_path / "a.jpg").read_bytes()
    with pytest.raises(MediaReadError):
        read_image(data[: len(data) // 2])
