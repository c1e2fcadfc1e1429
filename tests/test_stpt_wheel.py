"""`pip install wd-stpt` works standalone: the built wheel needs only torch, einops and safetensors.

safetensors writes torch tensors through numpy, so it is declared as `safetensors[torch]` and numpy
comes with it; nothing else does."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UV = shutil.which("uv")
pytestmark = pytest.mark.skipif(UV is None, reason="needs the uv binary to build and install the wheel")

# Workspace packages and heavy libraries a standalone backbone must never pull in.
FORBIDDEN = {"wd-tokenizer", "wd-masking", "wd-data", "wd-cli", "transformers", "xformers", "av", "pillow"}

FORWARD = """
import torch
from wd_stpt import STPT, get_config
model = STPT(get_config("tiny", codebook_size=16)).eval()
tokens = torch.randint(0, 17, (1, 2, 4, 4))
with torch.no_grad():
    print(tuple(model(tokens, None).shape))
"""


def _run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, cwd=REPO).stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run(UV, "build", "--package", "wd-stpt", "--wheel", "--out-dir", str(out), "--quiet")
    (built,) = out.glob("wd_stpt-*.whl")
    return built


def _requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        text = archive.read(metadata).decode()
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def test_wheel_declares_only_torch_einops_safetensors(wheel: Path) -> None:
    base = [r for r in _requirements(wheel) if "extra ==" not in r]
    names = sorted(re.split(r"[\[<>=; ]", r)[0] for r in base)
    assert names == ["einops", "safetensors", "torch"]
    extras = [r for r in _requirements(wheel) if "extra ==" in r]
    assert all(r.startswith("xformers") for r in extras)


def test_wheel_installs_alone_and_runs_a_forward_pass(wheel: Path, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run(UV, "venv", "--quiet", "--python", sys.executable, str(venv))
    python = venv / "bin" / "python"
    # Pin to the lock's versions so the install comes from the same (cached) files CI already has.
    constraints = tmp_path / "constraints.txt"
    locked = _run(UV, "export", "--package", "wd-stpt", "--frozen", "--no-hashes", "--no-emit-workspace", "--quiet")
    constraints.write_text(locked)
    _run(UV, "pip", "install", "--quiet", "--python", str(python), "-c", str(constraints), str(wheel))
    # Lines read "name==version" or, for the local wheel, "name @ file:///...".
    installed = {
        re.split(r"==| @ ", line)[0].strip().lower().replace("_", "-")
        for line in _run(UV, "pip", "freeze", "--python", str(python)).splitlines()
    }
    assert {"wd-stpt", "torch", "einops", "safetensors", "numpy"} <= installed
    assert not installed & FORBIDDEN
    assert _run(str(python), "-c", FORWARD).strip() == "(1, 2, 4, 4, 16)"
