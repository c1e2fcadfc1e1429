"""wd train on tar shards and on bad data: the lanes of any number of ranks, and a resumed run, read the samples
of one uninterrupted process; bad samples are skipped and counted in metrics.jsonl; a source past its skip limit
stops the run in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file
from wd_data.testing import image_record, write_tar
from wd_tokenizer.checkpoints import checkpoint_dirs

from wd_cli.main import cli
from wd_cli.train import (
    CheckpointSection,
    DataSection,
    LoggingSection,
    ModelSection,
    OptimSection,
    SourceConfig,
    STPTRunConfig,
    TrainSection,
    train_stpt,
)
from wd_cli.train.checkpoint import TRAINER_STATE
from wd_cli.train.configfile import dump_yaml
from wd_cli.train.data import DataStream, open_source

TINY = {"width": 32, "depth": 2, "num_heads": 2, "position_frames": 2, "position_height": 4, "position_width": 4}
SHARD_SIZES = (3, 7, 1, 5, 4)  # images per shard


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory):
    """5 img2dataset shards of SHARD_SIZES 32x32 images; image (s, i) is grey 10 s + i; two are corrupt."""
    root = tmp_path_factory.mktemp("shards")
    for shard, size in enumerate(SHARD_SIZES):
        members = []
        for item in range(size):
            kind = "corrupt_image" if (shard, item) in ((1, 2), (3, 0)) else "good"
            members += image_record(f"{shard}{item:02d}", 10 * shard + item, kind)
        write_tar(root / f"{shard:05d}.tar", members)
    return root


def tar_source(path, **options) -> SourceConfig:
    return SourceConfig("tar_shards", str(path), options={"num_frames": 1, "size": 32, **options})


def keys(samples: list[dict]) -> list[str]:
    return [sample["meta"]["keys"][0] for sample in samples]


def stream(shards, rank: int = 0, world_size: int = 1, batch_size: int = 4, num_workers: int = 0) -> DataStream:
    return DataStream([open_source(tar_source(shards), "s")], batch_size, seed=0, rank=rank, world_size=world_size,
                      num_workers=num_workers)


def test_the_lanes_of_two_ranks_make_the_global_batch_of_one_process(shards):
    one, ranks = stream(shards), [stream(shards, rank, 2) for rank in (0, 1)]
    for step in range(12):
        assert keys(one.draw(step, 0)) == [key for rank in ranks for key in keys(rank.draw(step, 0))]


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_a_resumed_stream_continues_the_uninterrupted_one_at_any_rank_count(shards, world_size):
    straight = stream(shards)
    expected = [keys(straight.draw(step, 0)) for step in range(10)]
    first = stream(shards)
    for step in range(4):
        first.draw(step, 0)
    state = first.state_dict()
    resumed = [stream(shards, rank, world_size) for rank in range(world_size)]
    for rank in resumed:
        rank.load_state_dict(state)
    for step in range(4, 10):
        assert [key for rank in resumed for key in keys(rank.draw(step, 0))] == expected[step]
    assert [row for rank in resumed for row in rank.lanes[0].state] != state["lanes.0"].tolist()  # they moved on


def test_decoding_threads_read_the_same_samples(shards):
    plain, threaded = stream(shards), stream(shards, num_workers=3)
    for step in range(10):
        assert keys(plain.draw(step, 0)) == keys(threaded.draw(step, 0))


def test_every_image_comes_once_per_pass_over_the_shards(shards):
    """Lane j reads the shards at sequence positions j, j + B, ...; the first pass is positions 0..4."""
    data = stream(shards, batch_size=2)
    seen, step = [], 0
    while min(sequence for sequence, _ in data.lanes[0].state) < len(SHARD_SIZES):
        seen += [(sample["meta"]["draw"], key) for sample in data.draw(step, 0) for key in sample["meta"]["keys"]]
        step += 1
    first_pass = [key for draw, key in seen if draw < len(SHARD_SIZES)]
    good = {f"{shard}{item:02d}" for shard, size in enumerate(SHARD_SIZES) for item in range(size)} - {"102", "300"}
    assert sorted(first_pass) == sorted(good)
    assert data.sources[0].skips.skipped >= 2 and "00001.tar:102" in str(data.sources[0].skips.reasons)


def run_config(source: SourceConfig, tokenizer, steps: int = 4, **sections) -> STPTRunConfig:
    defaults = dict(data=DataSection([source], batch_size=4), model=ModelSection(overrides=dict(TINY),
                                                                                   tokenizer=str(tokenizer)),
                    # float32: runs split over ranks or resumed are compared, where bf16 would round differently.
                    optim=OptimSection(lr=3e-3, warmup_steps=1),
                    train=TrainSection(steps=steps, device="cpu", mixed_precision="no"),
                    checkpoint=CheckpointSection(every=2), logging=LoggingSection(every=1))
    return STPTRunConfig(**{**defaults, **sections})


def test_training_on_tar_shards_resumes_exactly(shards, tiny_vqgan_dir, tmp_path, monkeypatch, sigterm_after_step):
    config = run_config(tar_source(shards), tiny_vqgan_dir)
    straight = train_stpt(config, tmp_path / "straight", progress=False)
    sigterm_after_step(1)
    train_stpt(config, tmp_path / "split", progress=False)
    assert checkpoint_dirs(tmp_path / "split")[-1].name == "step_0000002"
    monkeypatch.undo()
    resumed = train_stpt(config, tmp_path / "split", progress=False)
    for name, tensor in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor, atol=0, rtol=0)
    states = [torch.load(checkpoint_dirs(tmp_path / run)[-1] / TRAINER_STATE, weights_only=True)["data"]
              for run in ("straight", "split")]
    assert torch.equal(states[0]["lanes.0"], states[1]["lanes.0"]) and (states[0]["lanes.0"][:, 1] > 0).any()
    lines = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    replay = stream(shards)
    for step in range(4):
        replay.draw(step, 0)
    # 4 steps of 4 samples, and the first sample read twice more to check shapes before training.
    assert lines[-1]["samples_read"] == 4 * 4 + 2 and lines[-1]["samples_skipped"] == replay.num_skipped


@pytest.mark.distributed
def test_two_ranks_train_on_tar_shards_as_one_process(shards, tiny_vqgan_dir, tmp_path):
    config = run_config(tar_source(shards), tiny_vqgan_dir, steps=3, checkpoint=CheckpointSection(every=3))
    (tmp_path / "config.yaml").write_text(dump_yaml(config))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "wd_cli",
               "train", "stpt", "-c", str(tmp_path / "config.yaml"), "--no-progress", str(tmp_path / "ddp")]
    result = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    single = train_stpt(config, tmp_path / "single", progress=False)
    weights = load_file(checkpoint_dirs(tmp_path / "ddp")[-1] / "model" / "model.safetensors")
    for name, tensor in single.state_dict().items():
        torch.testing.assert_close(weights[name], tensor, atol=1e-5, rtol=0)
    states = [torch.load(checkpoint_dirs(tmp_path / run)[-1] / TRAINER_STATE, weights_only=True)["data"]
              for run in ("ddp", "single")]
    assert torch.equal(states[0]["lanes.0"], states[1]["lanes.0"])
    metrics = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["samples_read"] == 3 * 4 + 2 * 2  # summed over the ranks, each peeking twice


def test_bad_rows_and_files_are_skipped_and_counted_in_metrics(media_sources, tiny_vqgan_dir, tmp_path):
    video = media_sources["videos"] / "clip0.mp4"
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    rows = [b"path,caption", f"{video},good".encode(), b"broken.mp4,corrupt", f'{video},"stray'.encode(),
            f"{video},caf\xe9".encode("latin-1")]
    (tmp_path / "m.csv").write_bytes(b"\n".join(rows))
    source = SourceConfig("video_text", str(tmp_path / "m.csv"), options={"num_frames": 2, "size": 32})
    config = run_config(source, tiny_vqgan_dir, steps=2, checkpoint=CheckpointSection(every=2))
    train_stpt(config, tmp_path / "run", progress=False)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # Two malformed rows when the manifest is read, then the corrupt file each time a draw lands on it.
    assert len(lines) == 2 and lines[-1]["samples_read"] >= 2 * 4
    assert lines[-1]["samples_skipped"] >= lines[0]["samples_skipped"] >= 2 + 1


def test_a_source_past_its_skip_limit_stops_the_run_in_one_line(tiny_vqgan_dir, tmp_path):
    (tmp_path / "images").mkdir()
    for index in range(40):
        path = tmp_path / "images" / f"{index:02d}.png"
        if index % 2:
            path.write_bytes(b"not a png")
        else:
            Image.fromarray(np.full((32, 32, 3), 5 * index, np.uint8)).save(path)
    source = SourceConfig("image_text", str(tmp_path / "images"), options={"num_frames": 1, "size": 32})
    (tmp_path / "config.yaml").write_text(dump_yaml(run_config(source, tiny_vqgan_dir, steps=100)))
    result = CliRunner().invoke(cli, ["train", "stpt", "-c", str(tmp_path / "config.yaml"), "--no-progress",
                                      str(tmp_path / "run")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert "data.sources.0 (" in result.output and "more than the limit of 10%; first: sample" in result.output
