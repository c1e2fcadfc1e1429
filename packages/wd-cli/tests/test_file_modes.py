"""Every output ends with the modes a plain write gives under the umask: files 0666 and directories 0777 less the
umask (atomic writers must not leave mkstemp's 0600 or mkdtemp's 0700), whatever writes them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from wd_data import ShapesConfig, ShapesDataset, write_token_cache

from wd_cli.main import cli
from wd_cli.train import train_stpt
from wd_cli.train.configfile import dump_yaml


def modes(root: Path) -> dict[str, int]:
    return {str(path.relative_to(root)): stat.S_IMODE(path.stat().st_mode) for path in root.rglob("*")}


@pytest.mark.parametrize("umask", [0o027, 0o077])
def test_every_output_has_the_umask_modes(tiny_pipeline, tiny_pipeline_dir, tiny_run_config, run_parts, tiny_t5_dir,
                                          tiny_vqgan_dir, hash_text_dir, media_sources, tmp_path, umask):
    previous = os.umask(umask)
    try:
        tiny_pipeline.save_pretrained(tmp_path / "pipeline")
        result = CliRunner().invoke(cli, ["generate", "--task", "text2video", "--prompt", "a red circle",
                                          "--checkpoint", str(tiny_pipeline_dir), "--out", str(tmp_path / "new/v.mp4"),
                                          "--tokens-out", str(tmp_path / "t.npy"), "--no-progress"])
        assert result.exit_code == 0, result.output
        config = tiny_run_config(2)
        (tmp_path / "run.yaml").write_text(dump_yaml(config))
        train_stpt(config, tmp_path / "run", progress=False)
        result = CliRunner().invoke(cli, ["train", "export", str(tmp_path / "run"), str(tmp_path / "exported"),
                                          "--tokenizer", str(run_parts[0]), "--text-encoder", str(run_parts[1])])
        assert result.exit_code == 0, result.output
        dataset = ShapesDataset(ShapesConfig(height=16, width=16, num_frames=2), seeds=range(2))
        write_token_cache(dataset, lambda frames: frames[:, ::4, ::4, 0].long() // 16, tmp_path / "cache",
                          progress=False, metadata={"codebook_size": 16})
        for command in (["convert", "text-encoder", tiny_t5_dir, tmp_path / "t5"],
                        ["convert", "pipeline", "--stpt", tmp_path / "exported", "--set", "steps=2",
                         tmp_path / "converted"],
                        ["data", "cache", media_sources["images"], "--tokenizer", tiny_vqgan_dir, "--text-encoder",
                         hash_text_dir, "--out", tmp_path / "data-cache", "--frames", "2", "--size", "32",
                         "--no-progress"]):
            result = CliRunner().invoke(cli, [str(arg) for arg in command])
            assert result.exit_code == 0, result.output
    finally:
        os.umask(previous)
    found = modes(tmp_path)
    expected = {name: (0o777 if (tmp_path / name).is_dir() else 0o666) & ~umask for name in found}
    assert found == expected
    for name in ("pipeline/stpt/model.safetensors", "new/v.mp4", "t.npy", "run/metrics.jsonl", "run/train.lock",
                 "run/checkpoints/step_0000002/trainer_state.pt", "exported/pipeline.json", "cache",
                 "t5/t5/model.safetensors", "converted/pipeline.json", "data-cache/manifest.json"):
        assert name in found  # each kind of output was checked
