"""Task inputs: frames and masks fitted with the readers' geometry, mask and actions files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from wd_data import read_image, write_video

from wd_cli.media import fit_frames, fit_mask, read_actions, read_frames, read_mask


def test_fit_frames_matches_read_image_geometry(tmp_path: Path) -> None:
    # A smooth picture, so that the two bilinear resizers (Pillow's and torch's) agree up to rounding.
    y, x = np.mgrid[0:60, 0:90]
    image = np.stack([y * 4, x * 2, (x + y) * 1.5], axis=-1).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "image.png")
    fitted = fit_frames(image, (32, 32))
    assert fitted.shape == (1, 32, 32, 3) and fitted.dtype == torch.uint8
    reference = read_image(tmp_path / "image.png", size=(32, 32))  # resize short side, centre crop
    assert np.abs(fitted[0].numpy().astype(int) - reference.astype(int)).mean() < 2.0
    same = np.zeros((3, 32, 32, 3), dtype=np.uint8)
    assert fit_frames(same, (32, 32)).data_ptr() != same.ctypes.data  # a copy, never a view of the input


@settings(max_examples=25, deadline=None)
@given(
    st.integers(8, 48), st.integers(8, 48),
    st.tuples(st.floats(0, 0.9), st.floats(0, 0.9), st.floats(0.05, 1), st.floats(0.05, 1)),
)
def test_fit_mask_never_shrinks_the_region(height: int, width: int, box: tuple[float, ...]) -> None:
    top, left = int(box[0] * height), int(box[1] * width)
    bottom = min(height, top + max(1, int(box[2] * height)))
    right = min(width, left + max(1, int(box[3] * width)))
    mask = np.zeros((height, width), dtype=bool)
    mask[top:bottom, left:right] = True
    fitted = fit_mask(mask, (16, 16))
    picture = fit_frames(np.repeat(mask[..., None] * np.uint8(255), 3, axis=-1), (16, 16))[0, ..., 0]
    assert fitted.shape == (16, 16) and fitted.dtype == torch.bool
    assert not (picture.numpy() > 0)[~fitted.numpy()].any()  # wherever the resized picture shows it, it is kept
    assert fit_mask(np.ones((2, height, width), dtype=bool), (16, 16)).all()
    assert not fit_mask(np.zeros((height, width), dtype=bool), (16, 16)).any()


def test_read_mask_from_an_image_and_a_video(tmp_path: Path) -> None:
    picture = np.zeros((16, 24, 3), dtype=np.uint8)
    picture[4:8, 10:20, 1] = 255  # white in any channel counts
    Image.fromarray(picture).save(tmp_path / "mask.png")
    mask = read_mask(tmp_path / "mask.png")
    assert mask.shape == (16, 24) and mask.sum() == 40 and mask[4:8, 10:20].all()
    frames = np.zeros((4, 16, 16, 3), dtype=np.uint8)
    frames[:, :8] = 255
    write_video(tmp_path / "mask.mp4", frames, fps=4)
    video_mask = read_mask(tmp_path / "mask.mp4", max_frames=3)
    assert video_mask.shape == (3, 16, 16) and video_mask[:, :6].all() and not video_mask[:, 10:].any()
    assert read_frames(tmp_path / "mask.mp4").shape == (4, 16, 16, 3)


def test_read_actions_csv_and_json(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("yaw,speed\n0.1,5\n-0.1,4.5\n")
    (tmp_path / "b.csv").write_text("0.1,5\n\n-0.1,4.5\n")
    (tmp_path / "a.json").write_text(json.dumps([[0.1, 5], [-0.1, 4.5]]))
    (tmp_path / "b.json").write_text(json.dumps({"actions": [[0.1, 5], [-0.1, 4.5]]}))
    for name in ("a.csv", "b.csv", "a.json", "b.json"):
        actions = read_actions(tmp_path / name)
        assert actions.dtype == np.float32
        assert np.array_equal(actions, np.float32([[0.1, 5], [-0.1, 4.5]]))


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("ragged.csv", "0.1,5\n0.2\n", "rows of numbers"),
        ("words.csv", "yaw,speed\nleft,fast\n", "rows of numbers"),
        ("empty.csv", "", "non-empty table"),
        ("flat.json", "[0.1, 0.2]", "non-empty table"),
        ("nan.json", '[[0.1, NaN]]', "finite"),
        ("broken.json", "[[0.1,", "rows of numbers"),
    ],
)
def test_bad_actions_files_name_the_file(tmp_path: Path, name: str, text: str, message: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=f"{name}.*{message}"):
        read_actions(tmp_path / name)


def test_missing_actions_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cannot read actions file"):
        read_actions(tmp_path / "none.csv")
