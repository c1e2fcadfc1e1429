"""Config files for `wd train`: strict mapping, overrides, and one-line errors before any training starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from wd_data import DriveConfig, DriveDataset, write_token_cache

from wd_cli.main import cli
from wd_cli.train import ConfigError, OptimSection, STPTRunConfig, load_config
from wd_cli.train.configfile import dump_yaml, from_dict, parse_scalar, to_plain
from wd_cli.train.tokenizer import TokenizerRunConfig

CONFIGS = Path(__file__).parents[1] / "configs"
MINIMAL = '[[data.sources]]\nkind = "shapes"\n'


def write(tmp_path: Path, text: str, name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shipped_example_configs_map_onto_the_dataclasses():
    config = load_config(STPTRunConfig, CONFIGS / "stpt-shapes.toml")
    assert config.data.sources[0].kind == "shapes" and config.optim.ema_decay == 0.999
    assert config.optim.betas == (0.9, 0.999)  # defaults fill what the file leaves out
    tokenizer = load_config(TokenizerRunConfig, CONFIGS / "tokenizer-shapes.toml")
    assert tokenizer.train.loss.disc_start == 1000 and tokenizer.train.steps == 2000


def test_toml_and_yaml_give_the_same_config_and_the_saved_yaml_reads_back(tmp_path):
    from_toml = load_config(STPTRunConfig, write(tmp_path, MINIMAL + "[optim]\nlr = 1e-4\n"))
    from_yaml = load_config(STPTRunConfig, write(tmp_path, "data: {sources: [{kind: shapes}]}\noptim: {lr: 1.0e-4}\n",
                                                 "run.yaml"))
    assert from_toml == from_yaml
    assert load_config(STPTRunConfig, write(tmp_path, dump_yaml(from_toml), "saved.yaml")) == from_toml


def test_overrides_are_parsed_as_toml_scalars(tmp_path):
    config = load_config(STPTRunConfig, write(tmp_path, MINIMAL),
                         ["optim.lr=3e-4", "train.max_minutes=2", "parallel.compile=true",
                          "data.sources.0.weight=2", 'model.preset="small"', "optim.betas=[0.8, 0.9]"])
    assert (config.optim.lr, config.train.max_minutes, config.parallel.compile) == (3e-4, 2.0, True)
    assert (config.data.sources[0].weight, config.model.preset, config.optim.betas) == (2.0, "small", (0.8, 0.9))


@pytest.mark.parametrize("text, overrides, message", [
    (MINIMAL + "[optim]\nlrr = 1.0\n", [], "optim.lrr: unknown key"),
    (MINIMAL, ["optim.lr=abc"], "optim.lr: expected float, got 'abc'"),
    (MINIMAL, ["train.steps=1.5"], "train.steps: expected int, got 1.5"),
    (MINIMAL, ["parallel.compile=1"], "parallel.compile: expected bool, got 1"),
    (MINIMAL, ["optim.schedule=linear"], "optim.schedule: expected one of 'cosine', 'constant', got 'linear'"),
    (MINIMAL, ["data.sources.3.weight=1"], "override data.sources.3.weight: '3' is not an index of a list of 1"),
    ("[optim]\nlr = 1.0\n", [], "data: missing"),
    (MINIMAL, ["data.batch_size=0"], "data.batch_size: must be >= 1, got 0"),
    ("[[data.sources]]\nkind = \"webvid\"\n", [], "data.sources.0.kind: expected one of"),
    ("data = [", [], "does not parse"),
])
def test_config_mistakes_are_one_line_errors(tmp_path, text, overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(STPTRunConfig, write(tmp_path, text), overrides)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("source, message", [
    ('kind = "token_cache"\npath = "/nonexistent/cache"', "data.sources.0.path: /nonexistent/cache does not exist"),
    ('kind = "video_text"', "data.sources.0.path: missing"),
    ('kind = "shapes"\noptions = { heigth = 32 }', "data.sources.0.options.heigth: unknown key"),
    ('kind = "shapes"', "data.sources.0: a shapes source needs model.tokenizer"),
])
def test_cli_reports_data_mistakes_in_one_line_before_training(tmp_path, source, message):
    config = write(tmp_path, f"[[data.sources]]\n{source}\n")
    result = CliRunner().invoke(cli, ["train", "stpt", "-c", str(config), str(tmp_path / "run")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert result.output.strip().splitlines() == [f"Error: {result.output.strip().removeprefix('Error: ')}"]
    assert message in result.output
    assert not (tmp_path / "run").exists()  # nothing was trained or written


def test_data_that_does_not_fit_the_model_is_a_config_error(tmp_path):
    """Drive actions are (N, 2): an STPT with action_dim 3 is refused before training, in one line."""
    cache = write_token_cache(DriveDataset(DriveConfig(height=16, width=16, num_frames=2), seeds=range(2)),
                              lambda frames: torch.zeros(2, 4, 4, dtype=torch.long), tmp_path / "cache",
                              metadata={"codebook_size": 16}, progress=False)
    config = write(tmp_path, f'[[data.sources]]\nkind = "token_cache"\npath = "{cache}"\n'
                             '[model.overrides]\naction_dim = 3\n')
    result = CliRunner().invoke(cli, ["train", "stpt", "-c", str(config), str(tmp_path / "run")])
    assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1
    assert "data.sources.0: 2 action values per frame, the STPT's action_dim is 3" in result.output
    assert not (tmp_path / "run").exists()


def test_cli_help_shows_examples():
    for command in (["train"], ["train", "stpt"], ["train", "tokenizer"]):
        result = CliRunner().invoke(cli, [*command, "--help"])
        assert result.exit_code == 0 and "Example:" in result.output


def test_tokenizer_training_from_a_config_file(tmp_path):
    config = write(tmp_path, '[data]\nkind = "shapes"\noptions = { height = 32, width = 32, num_frames = 2 }\n'
                             '[train]\nsteps = 2\nlog_every = 1\n[train.loss]\ndisc_start = 1\n', "tokenizer.toml")
    result = CliRunner().invoke(cli, ["train", "tokenizer", "-c", str(config), "--set", "preset=f8-small",
                                      "--set", "num_clips=2", "--set", "batch_size=2", "--no-progress",
                                      str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "checkpoints" / "step_0000002" / "model" / "model.safetensors").is_file()
    assert (tmp_path / "run" / "run_config.yaml").is_file()


@given(lr=st.floats(min_value=0, max_value=1, allow_nan=False), steps=st.integers(min_value=0, max_value=10**9),
       clip=st.one_of(st.none(), st.floats(min_value=0.1, max_value=10)))
def test_a_section_round_trips_through_plain_values(lr, steps, clip):
    section = OptimSection(lr=lr, warmup_steps=steps, grad_clip=clip)
    assert from_dict(OptimSection, to_plain(section)) == section
    assert parse_scalar(repr(lr)) == lr
