"""STPT training: loss goes down, resume is exact, interrupted checkpoints are skipped, DDP equals one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file
from wd_data import DriveConfig, DriveDataset, ShapesConfig, ShapesDataset, write_token_cache
from wd_stpt import STPT
from wd_tokenizer.checkpoints import checkpoint_dirs

from wd_cli.main import cli
from wd_cli.pipeline import WorldDreamerPipeline
from wd_cli.text_encoders import HashTextEncoder
from wd_cli.train import (
    CheckpointSection,
    DataSection,
    LoggingSection,
    ModelSection,
    OptimSection,
    ParallelSection,
    SourceConfig,
    STPTRunConfig,
    TrainSection,
    train_stpt,
)
from wd_cli.train.checkpoint import TRAINER_STATE
from wd_cli.train.configfile import dump_yaml
from wd_cli.train.trainer import lr_factor

CODEBOOK, TEXT_DIM = 16, 8
TINY = {"width": 32, "depth": 2, "num_heads": 2, "position_frames": 2, "position_height": 4, "position_width": 4}
text_encoder = HashTextEncoder(dim=TEXT_DIM)


def encode_frames(frames: torch.Tensor) -> torch.Tensor:
    """A stand-in tokenizer: (N, 16, 16, 3) uint8 -> (N, 4, 4) ids in [0, 16) from a pixel subsample."""
    return torch.as_tensor(frames)[:, ::4, ::4, 0].long() // 16


def write_cache(directory: Path, world: str, count: int = 16) -> Path:
    """A token cache of `count` 2 x 4 x 4-token clips with caption embeddings (and actions for drive)."""
    if world == "shapes":
        dataset = ShapesDataset(ShapesConfig(height=16, width=16, num_frames=2, min_size=0.15), seeds=range(count))
    else:
        dataset = DriveDataset(DriveConfig(height=16, width=16, num_frames=2), seeds=range(count))
    return write_token_cache(dataset, encode_frames, directory, samples_per_shard=8, progress=False,
                             metadata={"codebook_size": CODEBOOK},
                             encode_text=lambda caption: text_encoder.encode([caption])[0][0])


@pytest.fixture(scope="module")
def caches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("caches")
    return {world: write_cache(root / world, world) for world in ("shapes", "drive")}


def run_config(caches: dict[str, Path], steps: int = 6, worlds: tuple[str, ...] = ("shapes", "drive"),
               **sections) -> STPTRunConfig:
    weights = {"shapes": 1.0, "drive": 0.5}
    sources = [SourceConfig("token_cache", str(caches[world]), weight=weights[world]) for world in worlds]
    defaults = dict(
        data=DataSection(sources=sources, batch_size=4),
        model=ModelSection(overrides=dict(TINY)),
        optim=OptimSection(lr=3e-3, warmup_steps=2),
        # float32: these tests compare runs that split or resume the work differently, where bf16 (what `auto` picks
        # on a CPU with bf16 units) would round differently.
        train=TrainSection(steps=steps, mixed_precision="no"),
        checkpoint=CheckpointSection(every=2, keep=2),
        logging=LoggingSection(every=1),
    )
    return STPTRunConfig(**{**defaults, **sections})


def latest_checkpoint(run_dir: Path) -> Path:
    return checkpoint_dirs(run_dir)[-1]


def checkpoint_state(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict]:
    directory = latest_checkpoint(run_dir)
    model = STPT.from_pretrained(directory / "model")
    return model.state_dict(), torch.load(directory / TRAINER_STATE, weights_only=True)


def assert_same_tensors(a, b, atol: float = 0.0) -> None:
    """Nested dicts/lists of tensors and numbers are equal (within atol for floating tensors)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same_tensors(a[key], b[key], atol)
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same_tensors(x, y, atol)
    elif isinstance(a, torch.Tensor):
        torch.testing.assert_close(a, b, atol=atol, rtol=0)
    else:
        assert a == b


def test_training_reduces_the_loss_on_two_caches(caches, tmp_path):
    config = run_config(caches, steps=30, checkpoint=CheckpointSection(every=30))
    model = train_stpt(config, tmp_path, progress=False)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, 31))
    first, last = np.mean([line["loss"] for line in lines[:5]]), np.mean([line["loss"] for line in lines[-5:]])
    assert last < 0.8 * first
    assert not model.training and model.config.codebook_size == CODEBOOK and model.config.text_dim == TEXT_DIM
    assert (tmp_path / "config.yaml").read_text() == dump_yaml(config)


@pytest.mark.parametrize("worlds", [("shapes", "drive"), ("shapes",)])
def test_resume_matches_an_uninterrupted_run(caches, tmp_path, monkeypatch, sigterm_after_step, worlds):
    """2N steps straight vs N steps, stopped by SIGTERM (which saves), then resumed: identical weights,
    optimizer, scheduler and data position (also when no batch has actions, so the action MLP has no state)."""
    straight = train_stpt(run_config(caches, steps=6, worlds=worlds), tmp_path / "straight", progress=False)
    sigterm_after_step(3)
    train_stpt(run_config(caches, steps=6, worlds=worlds), tmp_path / "split", progress=False)
    # The signal comes while step 3 is logged: step 4 finishes, saves and the run exits.
    assert latest_checkpoint(tmp_path / "split").name == "step_0000004"
    monkeypatch.undo()
    resumed = train_stpt(run_config(caches, steps=6, worlds=worlds), tmp_path / "split", progress=False)
    assert_same_tensors(straight.state_dict(), resumed.state_dict())
    (weights_a, state_a) = checkpoint_state(tmp_path / "straight")
    (weights_b, state_b) = checkpoint_state(tmp_path / "split")
    assert_same_tensors(weights_a, weights_b)
    for key in ("step", "scheduler", "data"):
        assert_same_tensors(state_a[key], state_b[key])
    optimizer_a, optimizer_b = state_a["optimizer"], state_b["optimizer"]
    assert_same_tensors(optimizer_a["param_groups"], optimizer_b["param_groups"])
    assert_same_tensors(optimizer_a["state"], {name: optimizer_b["state"][name] for name in optimizer_a["state"]})
    for name in optimizer_b["state"].keys() - optimizer_a["state"].keys():  # never had a gradient (no actions):
        assert not optimizer_b["state"][name]["exp_avg"].any()  # loading gives it an all-zero state
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))  # lines after the resumed checkpoint are written once


def test_interrupted_checkpoint_write_leaves_the_previous_one(caches, tmp_path, monkeypatch):
    train_stpt(run_config(caches, steps=2), tmp_path, progress=False)
    real_save = torch.save

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # killed while writing step 4's trainer state

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        train_stpt(run_config(caches, steps=4), tmp_path, progress=False)
    monkeypatch.setattr(torch, "save", real_save)
    # The interrupted save removed its staging directory (a kill -9 leaves it: see test_faults_kill.py).
    assert [path.name for path in (tmp_path / "checkpoints").iterdir()] == ["step_0000002"]
    weights, state = checkpoint_state(tmp_path)
    assert state["step"] == 2
    model = train_stpt(run_config(caches, steps=2), tmp_path, progress=False)  # finished: loads, trains nothing
    assert_same_tensors(model.state_dict(), weights)


def test_time_budget_stops_with_a_checkpoint_and_a_finished_run_returns(caches, tmp_path):
    config = run_config(caches, steps=1000, train=TrainSection(steps=1000, max_minutes=1e-6, mixed_precision="no"))
    train_stpt(config, tmp_path, progress=False)
    assert latest_checkpoint(tmp_path).name == "step_0000001"
    done = run_config(caches, steps=1)
    model = train_stpt(done, tmp_path, progress=False)
    assert_same_tensors(model.state_dict(), checkpoint_state(tmp_path)[0])


def test_lr_anneals_by_whichever_of_steps_and_time_runs_out_first():
    section = OptimSection(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(section, 1000, 4) == pytest.approx(0.5)  # warmup, by steps whatever the time
    assert lr_factor(section, 1000, 4, time_spent=1.0) == pytest.approx(0.5)
    assert lr_factor(section, 1000, 505) == pytest.approx(0.55)  # half way by steps
    assert lr_factor(section, 1000, 505, time_spent=0.25) == pytest.approx(0.55)  # time is behind: steps lead
    assert lr_factor(section, 1000, 505, time_spent=1.0) == pytest.approx(0.1)  # time is up: annealed
    assert lr_factor(section, 1000, 1000, time_spent=0.0) == pytest.approx(0.1)


def test_a_spent_time_budget_stops_the_run_across_resumes(caches, tmp_path):
    config = run_config(caches, steps=1000, train=TrainSection(steps=1000, time_budget_minutes=1e-6))
    train_stpt(config, tmp_path, progress=False)
    first = latest_checkpoint(tmp_path)
    assert first.name == "step_0000001"
    state = torch.load(first / "trainer_state.pt", weights_only=True)
    assert state["trained_seconds"] > 6e-5  # the budget, 1e-6 minutes, was spent by the first step
    train_stpt(config, tmp_path, progress=False)  # resumed: the budget counts the first call's time
    assert latest_checkpoint(tmp_path) == first


def test_ema_weights_are_returned_and_saved_and_tensorboard_logs(caches, tmp_path):
    config = run_config(caches, steps=3, optim=OptimSection(lr=3e-3, warmup_steps=1, ema_decay=0.5),
                        logging=LoggingSection(every=1, tensorboard=True))
    model = train_stpt(config, tmp_path, progress=False)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    raw = STPT.from_pretrained(latest_checkpoint(tmp_path) / "model").state_dict()
    ema = STPT.from_pretrained(latest_checkpoint(tmp_path) / "ema").state_dict()
    assert_same_tensors(model.state_dict(), ema)
    assert not torch.equal(raw["head.weight"], ema["head.weight"])


def test_fine_tune_from_a_checkpoint_at_another_shape(caches, tmp_path):
    pre = run_config(caches, steps=20, checkpoint=CheckpointSection(every=20))
    train_stpt(pre, tmp_path / "pre", progress=False)
    long_clips = ShapesDataset(ShapesConfig(height=24, width=16, num_frames=3, min_size=0.15), seeds=range(8))
    cache = write_token_cache(long_clips, encode_frames, tmp_path / "long", progress=False,
                              metadata={"codebook_size": CODEBOOK},
                              encode_text=lambda caption: text_encoder.encode([caption])[0][0])
    data = DataSection([SourceConfig("token_cache", str(cache))], batch_size=4)
    first_losses = {}
    for init_from in (None, str(tmp_path / "pre" / "checkpoints" / "step_0000020")):
        config = run_config(caches, steps=1, data=data, model=ModelSection(overrides=dict(TINY), init_from=init_from))
        run_dir = tmp_path / f"fine-{init_from is None}"
        train_stpt(config, run_dir, progress=False)  # 3 x 6 x 4 tokens; position tables learned at 2 x 4 x 4
        first_losses[init_from is None] = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert first_losses[False] < first_losses[True] - 0.3  # the pre-trained weights were loaded and fit


def test_on_the_fly_drive_and_images_with_a_tokenizer_and_text_encoder(tmp_path):
    """Frames tokenized during training: drive clips (actions) and an image folder (image mode) in one run,
    action-conditioned sample videos, then export to a pipeline."""
    from PIL import Image
    from wd_tokenizer import VQGAN, get_config

    tokenizer = VQGAN(get_config("f8-small", fsq_levels=[4, 4])).eval()  # 16 codes
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    text_encoder.save_pretrained(tmp_path / "text")
    (tmp_path / "images").mkdir()
    for index in range(4):
        Image.fromarray(np.full((32, 32, 3), 60 * index, dtype=np.uint8)).save(tmp_path / "images" / f"{index}.png")
        (tmp_path / "images" / f"{index}.txt").write_text(f"a flat image of grey {index}")
    sources = [SourceConfig("drive", options={"height": 32, "width": 32, "num_frames": 2}),
               SourceConfig("image_text", str(tmp_path / "images"), options={"num_frames": 2, "size": 32})]
    config = STPTRunConfig(
        data=DataSection(sources, batch_size=2, num_workers=2),
        model=ModelSection(overrides=dict(TINY), tokenizer=str(tmp_path / "tokenizer"),
                           text_encoder=str(tmp_path / "text")),
        train=TrainSection(steps=4), logging=LoggingSection(every=1, sample_every=4, num_samples=1, sample_steps=2))
    model = train_stpt(config, tmp_path / "run", progress=False)
    assert model.config.codebook_size == 16 and model.config.text_dim == TEXT_DIM
    assert [path.name for path in (tmp_path / "run" / "samples").iterdir()] == ["step_0000004_0.mp4"]
    state = torch.load(latest_checkpoint(tmp_path / "run") / TRAINER_STATE, weights_only=True)
    assert (state["data"]["positions"] > 0).all()  # both sources were drawn in 4 steps
    result = CliRunner().invoke(cli, ["train", "export", str(tmp_path / "run"), str(tmp_path / "pipeline")])
    assert result.exit_code == 0, result.output
    pipeline = WorldDreamerPipeline.from_pretrained(tmp_path / "pipeline")
    assert_same_tensors(pipeline.stpt.state_dict(), model.state_dict())
    assert (pipeline.defaults.num_frames, pipeline.defaults.height, pipeline.defaults.width) == (2, 32, 32)
    again = ["train", "export", str(tmp_path / "run"), str(tmp_path / "pipeline")]
    refused = CliRunner().invoke(cli, again)
    assert refused.exit_code == 2 and "exists; pass --overwrite to replace it" in refused.output
    assert CliRunner().invoke(cli, [*again, "--overwrite"]).exit_code == 0


RANK_SCRIPT = """
import sys, torch
from safetensors.torch import save_file
from wd_cli.train import STPTRunConfig, load_config, train_stpt
model = train_stpt(load_config(STPTRunConfig, sys.argv[1]), sys.argv[2], progress=False)
state = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).contiguous() for k, v in model.state_dict().items()}
save_file(state, f"{sys.argv[2]}/rank{torch.distributed.get_rank()}.safetensors")
"""


@pytest.mark.distributed
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one_process(caches, tmp_path, strategy):
    """torchrun, 2 CPU ranks on gloo, global batch 4 (DDP, or FSDP2 in float32): both ranks end with identical
    weights, equal to one process's with the same global batch."""
    config = run_config(caches, steps=3, checkpoint=CheckpointSection(every=3),
                        train=TrainSection(steps=3, grad_accumulation=2, device="cpu", mixed_precision="no"),
                        parallel=ParallelSection(strategy=strategy, fsdp_param_dtype="float32"))
    (tmp_path / "config.yaml").write_text(dump_yaml(config))
    (tmp_path / "rank_script.py").write_text(RANK_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(tmp_path / "rank_script.py"), str(tmp_path / "config.yaml"), str(tmp_path / "ranks")]
    result = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (load_file(tmp_path / "ranks" / f"rank{rank}.safetensors") for rank in (0, 1))
    assert_same_tensors(rank0, rank1)
    single = train_stpt(config, tmp_path / "single", progress=False)
    assert_same_tensors(rank0, single.state_dict(), atol=1e-5)
    weights, state = checkpoint_state(tmp_path / "ranks")
    assert_same_tensors(weights, rank0)
    assert len(state["rng"]) == 2  # each rank's RNG state is kept
    assert state["data"]["positions"].sum() == 3 * 2 * 4  # steps x micro-batches x global batch


@pytest.mark.distributed
def test_torchrun_launches_the_wd_command(caches, tmp_path):
    """`torchrun -m wd_cli train stpt`: 2 ranks, one checkpoint, the weights of one process."""
    config = run_config(caches, steps=2, train=TrainSection(steps=2, device="cpu", mixed_precision="no"))
    (tmp_path / "config.yaml").write_text(dump_yaml(config))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "wd_cli", "train", "stpt", "-c", str(tmp_path / "config.yaml"), "--no-progress", str(tmp_path / "ddp")]
    result = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    single = train_stpt(config, tmp_path / "single", progress=False)
    assert_same_tensors(checkpoint_state(tmp_path / "ddp")[0], single.state_dict(), atol=1e-5)


def test_activation_checkpointing_gives_the_same_weights(caches, tmp_path):
    plain = train_stpt(run_config(caches, steps=2), tmp_path / "plain", progress=False)
    checkpointed = train_stpt(run_config(caches, steps=2, parallel=ParallelSection(activation_checkpointing=True)),
                              tmp_path / "checkpointed", progress=False)
    assert checkpointed.config.activation_checkpointing
    assert_same_tensors(checkpointed.state_dict(), plain.state_dict(), atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_compiled_checkpointed_training_reduces_the_loss(caches, tmp_path):
    config = run_config(caches, steps=20, checkpoint=CheckpointSection(every=20),
                        parallel=ParallelSection(activation_checkpointing=True, compile=True))
    model = train_stpt(config, tmp_path, progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert next(model.parameters()).is_cuda and np.mean(losses[-5:]) < np.mean(losses[:5])
