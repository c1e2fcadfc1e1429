"""`wd data cache / curate / inspect` on tiny data in the real formats: every source kind caches, a killed
run resumes without duplicates or gaps, two torchrun ranks write the cache of one process, bad data is skipped
and reported, and a source past its skip limit stops in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from wd_data import TokenCacheDataset, write_video
from wd_tokenizer import VQGAN

from wd_cli.data.sources import detect_kind
from wd_cli.main import cli
from wd_cli.train.configfile import ConfigError

CLIP = ["--frames", "2", "--size", "32"]


def run_wd(*args: str) -> str:
    result = CliRunner().invoke(cli, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return result.output


def wd_error(*args: str) -> str:
    """The one error line of a failing command (and no traceback)."""
    result = CliRunner().invoke(cli, [str(arg) for arg in args])
    assert result.exit_code == 1 and result.output.startswith("Error: "), result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    return result.output


def cached(cache_dir: Path) -> list[tuple[list, str, bool]]:
    """(tokens, caption, is_image) of every sample, in order."""
    cache = TokenCacheDataset(cache_dir)
    return [(cache[i]["tokens"].tolist(), cache[i]["caption"], cache[i]["is_image"]) for i in range(len(cache))]


@pytest.mark.parametrize(("name", "kind"), [("videos", "video_text"), ("csv", "video_text"), ("jsonl", "video_text"),
                                            ("images", "image_text"), ("shards", "tar_shards"),
                                            ("video_shards", "tar_shards"), ("nuscenes", "nuscenes")])
def test_kinds_are_told_from_the_path(media_sources, name, kind):
    assert detect_kind(str(media_sources[name]))[0] == kind


def test_kinds_of_patterns_worlds_caches_and_curated_folders(tmp_path, media_sources):
    assert detect_kind("shapes") == ("shapes", None)
    assert detect_kind("laion/{00000..00009}.tar") == ("tar_shards", "laion/{00000..00009}.tar")
    (tmp_path / "curated").mkdir()
    (tmp_path / "curated" / "manifest.jsonl").write_text("")
    Image.new("RGB", (4, 4)).save(tmp_path / "curated" / "keyframe.jpg")
    assert detect_kind(str(tmp_path / "curated")) == ("video_text", str(tmp_path / "curated" / "manifest.jsonl"))
    with pytest.raises(ConfigError, match="does not exist"):
        detect_kind(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no videos, images"):
        detect_kind(str(tmp_path / "empty"))


@pytest.mark.parametrize(
    ("name", "flags", "expected"),
    [
        ("videos", ["--fps", "4"], (3, ["a panning texture number 0", "a panning texture number 1", ""])),
        ("csv", [], (3, [f"a panning texture number {index}" for index in range(3)])),
        ("jsonl", [], (3, [f"texture {index}" for index in range(3)])),
        ("images", [], (4, None)),
        ("shards", [], (4, None)),
        ("video_shards", ["--fps", "4"], (2, ["video 0", "video 1"])),
        ("nuscenes", ["--option", "version=v1.0-mini", "--option", "split=none"], (3, None)),
    ],
)
def test_every_source_kind_caches_for_training(media_sources, tiny_vqgan_dir, hash_text_dir, tmp_path, name, flags,
                                              expected):
    if name == "nuscenes":
        pytest.importorskip("nuscenes")
    output = run_wd("data", "cache", media_sources[name], "--tokenizer", tiny_vqgan_dir, "--text-encoder",
                    hash_text_dir, "--out", tmp_path / "cache", *CLIP, *flags, "--no-progress")
    count, captions = expected
    assert f"{count} samples of [2, 4, 4] tokens" in output and "0 skipped" in output
    cache = TokenCacheDataset(tmp_path / "cache")
    samples = [cache[index] for index in range(len(cache))]
    if captions is not None:
        assert [sample["caption"] for sample in samples] == captions
    assert cache.metadata["codebook_size"] == 16 and cache.schema["text_dim"] == 8
    assert all(sample["is_image"] == (name in ("images", "shards")) for sample in samples)
    assert all(sample["tokens"].shape == (2, 4, 4) for sample in samples)
    assert (samples[0]["actions"] is not None) == (name == "nuscenes")
    # The cache holds what the tokenizer makes of what the dataset reads.
    vqgan = VQGAN.from_pretrained(tiny_vqgan_dir)
    first = run_source_first_sample(media_sources[name], name, flags)
    assert torch.equal(samples[0]["tokens"], vqgan.encode_video(first["frames"]))


def run_source_first_sample(path: Path, name: str, flags: list[str]) -> dict:
    from wd_cli.data.sources import source_config
    from wd_cli.train.data import open_source

    options = [flags[i + 1] for i in range(len(flags)) if flags[i] == "--option"]
    fps = float(flags[flags.index("--fps") + 1]) if "--fps" in flags else None
    config = source_config(str(path), None, 2, "32", fps, tuple(options), 0.1)
    source = open_source(config, "SOURCE")
    return source.head(1)[0] if name.endswith("shards") else source.dataset.load(0)


def test_worlds_need_a_sample_count_and_cache_its_seeds(tiny_vqgan_dir, tmp_path):
    assert "endless" in wd_error("data", "cache", "shapes", "--tokenizer", tiny_vqgan_dir, "--out", tmp_path / "c")
    run_wd("data", "cache", "drive", "--tokenizer", tiny_vqgan_dir, "--out", tmp_path / "c", "--samples", "3",
           *CLIP, "--no-progress")
    cache = TokenCacheDataset(tmp_path / "c")
    assert len(cache) == 3 and [cache[i]["meta"]["seed"] for i in range(3)] == [0, 1, 2]
    assert cache[0]["actions"].shape == (2, 2)


def test_workers_write_the_same_cache(media_sources, tiny_vqgan_dir, tmp_path):
    for workers in ("0", "2"):
        run_wd("data", "cache", media_sources["csv"], "--tokenizer", tiny_vqgan_dir, "--out", tmp_path / workers,
               *CLIP, "--samples-per-shard", "1", "--workers", workers, "--no-progress")
    assert cached(tmp_path / "0") == cached(tmp_path / "2")


def test_resuming_with_another_tokenizer_or_clip_shape_is_refused(media_sources, tiny_vqgan_dir, tmp_path):
    run_wd("data", "cache", media_sources["csv"], "--tokenizer", tiny_vqgan_dir, "--out", tmp_path / "c", *CLIP,
           "--no-progress")
    error = wd_error("data", "cache", media_sources["csv"], "--tokenizer", tiny_vqgan_dir, "--out", tmp_path / "c",
                     "--frames", "3", "--size", "32")
    assert "write to a new directory" in error


def test_a_killed_cache_run_resumes_without_duplicates_or_gaps(tiny_vqgan_dir, tmp_path):
    args = ["data", "cache", "shapes", "--tokenizer", str(tiny_vqgan_dir), "--samples", "40", "--samples-per-shard",
            "2", *CLIP, "--no-progress"]
    run_wd(*args, "--out", tmp_path / "straight")
    process = subprocess.Popen([sys.executable, "-m", "wd_cli", *args, "--out", str(tmp_path / "killed")],
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "killed").glob("shard-00002")) and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    written = sorted(path.name for path in (tmp_path / "killed").glob("shard-*[0-9]"))
    assert 3 <= len(written) < 20, written  # killed midway
    assert not json.loads((tmp_path / "killed" / "manifest.json").read_text())["complete"]
    run_wd(*args, "--out", tmp_path / "killed")
    assert cached(tmp_path / "killed") == cached(tmp_path / "straight")
    assert not list((tmp_path / "killed").glob("*.partial"))


@pytest.mark.distributed
def test_two_torchrun_ranks_write_the_cache_of_one_process(media_sources, tiny_vqgan_dir, hash_text_dir, tmp_path):
    args = ["data", "cache", str(media_sources["shards"]), "--tokenizer", str(tiny_vqgan_dir), "--text-encoder",
            str(hash_text_dir), *CLIP, "--no-progress"]
    run_wd(*args, "--out", tmp_path / "one")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "wd_cli",
               *args, "--out", str(tmp_path / "two")]
    result = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "4 samples of [2, 4, 4] tokens in 2 shards" in result.stdout
    assert cached(tmp_path / "two") == cached(tmp_path / "one")
    assert (tmp_path / "two" / "manifest.json").read_text() == (tmp_path / "one" / "manifest.json").read_text()


def bad_video_source(root: Path, good_video: Path) -> Path:
    """A CSV of 3 good rows, a stray quote, a non-UTF-8 byte, a row of the wrong width and a corrupt video."""
    (root / "broken.mp4").write_bytes(b"not a video at all")
    rows = [b"path,caption", *(f"{good_video},good {index}".encode() for index in range(3)),
            f'{good_video},"a stray quote'.encode(), f"{good_video},caf\xe9".encode("latin-1"),
            f"{good_video},x,y".encode(), b"broken.mp4,a corrupt file"]
    (root / "bad.csv").write_bytes(b"\n".join(rows) + b"\n")
    return root / "bad.csv"


def test_bad_rows_and_files_are_skipped_counted_and_named(media_sources, tiny_vqgan_dir, tmp_path):
    manifest = bad_video_source(tmp_path, media_sources["videos"] / "clip0.mp4")
    output = run_wd("data", "cache", manifest, "--tokenizer", tiny_vqgan_dir, "--out", tmp_path / "c", *CLIP,
                    "--no-progress")
    assert "3 samples of [2, 4, 4] tokens in 1 shards, 1 skipped" in output
    assert "broken.mp4: cannot open" in output
    assert [caption for _, caption, _ in cached(tmp_path / "c")] == ["good 0", "good 1", "good 2"]


def test_a_skip_rate_past_the_limit_is_one_line(tiny_vqgan_dir, tmp_path):
    (tmp_path / "images").mkdir()
    for index in range(120):
        path = tmp_path / "images" / f"{index:03d}.png"
        if index % 4:
            Image.new("RGB", (32, 32), (index, 0, 0)).save(path)
        else:
            path.write_bytes(b"not a png")
    error = wd_error("data", "cache", tmp_path / "images", "--tokenizer", tiny_vqgan_dir, "--out", tmp_path / "c",
                     "--frames", "1", "--size", "32", "--no-progress")
    assert "samples skipped (2" in error and "more than the limit of 10%" in error
    run_wd("data", "cache", tmp_path / "images", "--tokenizer", tiny_vqgan_dir, "--out", tmp_path / "ok", "--frames",
           "1", "--size", "32", "--max-skip-rate", "0.3", "--no-progress")
    assert len(TokenCacheDataset(tmp_path / "ok")) == 90


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/no/such/videos"], "does not exist"),
        (["shapes", "--samples", "2", "--fps", "3"], "--fps: a shapes source has no frame rate"),
        (["shapes", "--samples", "2", "--size", "big"], "--size 'big': expected H or HxW"),
        (["shapes", "--samples", "2", "--option", "colour=red"], "SOURCE.options.colour: unknown key"),
    ],
)
def test_user_mistakes_are_one_line(tiny_vqgan_dir, tmp_path, args, message):
    assert message in wd_error("data", "cache", *args, "--tokenizer", tiny_vqgan_dir, "--out", tmp_path / "c")


def test_inspect_a_source_reports_distributions_corruption_and_a_contact_sheet(media_sources, tmp_path):
    manifest = bad_video_source(tmp_path, media_sources["videos"] / "clip0.mp4")
    output = run_wd("data", "inspect", manifest, *CLIP, "--samples", "3", "--sheet", tmp_path / "sheet.png")
    assert "a video_text source, 4 samples" in output
    assert "sizes 64x48 x3" in output and "fps 8 x3" in output and "frames min 12 median 12 max 12" in output
    assert "corrupt files: 1 of 4 probed" in output and "broken.mp4" in output
    assert "rows skipped when opened: 3" in output and "bad.csv:5: malformed CSV row" in output
    sheet = np.asarray(Image.open(tmp_path / "sheet.png"))
    assert sheet.shape == (3 * (96 + 2), 8 * 96, 3)  # 3 samples, tiles 96 px high, room for 8 frames


def test_inspect_a_cache_checks_every_id(media_sources, tiny_vqgan_dir, tmp_path):
    run_wd("data", "cache", media_sources["jsonl"], "--tokenizer", tiny_vqgan_dir, "--out", tmp_path / "c", *CLIP,
           "--samples-per-shard", "1", "--no-progress")
    tokens = tmp_path / "c" / "shard-00001" / "tokens.npy"
    data = bytearray(tokens.read_bytes())
    data[-2:] = np.uint16(999).tobytes()  # in place: sizes and headers stay valid
    tokens.write_bytes(bytes(data))
    os.truncate(tmp_path / "c" / "shard-00002" / "samples.json", 5)
    output = run_wd("data", "inspect", tmp_path / "c", "--tokenizer", tiny_vqgan_dir, "--sheet", tmp_path / "s.png")
    assert "a token cache, complete" in output and "samples: 2 of [2, 4, 4] tokens, codebook 16" in output
    assert "shards refused at open: 1 samples" in output and "samples.json is 5 bytes" in output
    assert "samples with ids past the codebook: 1" in output and "(decoded)" in output
    assert Image.open(tmp_path / "s.png").size == (8 * 96, 2 * 98)


def test_curate_cuts_scenes_and_its_output_caches_as_it_is(tiny_vqgan_dir, texture_clip, tmp_path):
    pytest.importorskip("scenedetect")
    pytest.importorskip("cv2")
    (tmp_path / "raw").mkdir()
    cut = np.concatenate([texture_clip(0, 24), texture_clip(1, 24) // 3])  # a hard cut (to a darker scene) at 3 s
    write_video(tmp_path / "raw" / "a.mp4", cut, fps=8)
    write_video(tmp_path / "raw" / "still.mp4", np.repeat(texture_clip(2, 1), 24, axis=0), fps=8)
    (tmp_path / "raw" / "broken.mp4").write_bytes(b"nope")
    output = run_wd("data", "curate", tmp_path / "raw", "--out", tmp_path / "curated", "--min-scene-seconds", "1")
    assert "kept 2 of 4 scenes from 3 videos" in output
    assert "dropped 1: unreadable" in output and "dropped 1: mean optical flow" in output
    rows = [json.loads(line) for line in (tmp_path / "curated" / "manifest.jsonl").read_text().splitlines()]
    assert [row["path"] for row in rows] == ["a_0000.mp4", "a_0001.mp4"] and len(rows[0]["keyframes"]) == 3
    run_wd("data", "cache", tmp_path / "curated", "--tokenizer", tiny_vqgan_dir, "--out", tmp_path / "c", *CLIP,
           "--no-progress")
    assert len(TokenCacheDataset(tmp_path / "c")) == 2

