"""`wd info` reports versions, device, backend and preset sizes that match the real models."""

from __future__ import annotations

import torch
import wd_stpt
from click.testing import CliRunner

from wd_cli.info import collect_info
from wd_cli.main import cli


def test_info_counts_match_models_built_for_real() -> None:
    info = collect_info()
    assert info.device in {"cpu", "cuda"}
    assert info.attention_backend in {"sdpa", "xformers"}
    real = sum(p.numel() for p in wd_stpt.STPT(wd_stpt.get_config("tiny")).parameters())
    assert info.stpt_parameters["tiny"] == real
    # The paper's backbone has about a billion parameters.
    assert 0.9e9 < info.stpt_parameters["paper-1b"] < 1.2e9
    assert info.versions["torch"] == torch.__version__.split("+")[0]


def test_info_command_prints_every_preset() -> None:
    result = CliRunner().invoke(cli, ["info"])
    assert result.exit_code == 0, result.output
    for name in wd_stpt.PRESETS:
        assert f"stpt {name}" in result.output
    assert "attention" in result.output


def test_help_shows_an_example() -> None:
    for args in (["--help"], ["info", "--help"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 0
        assert "Example:" in result.output
