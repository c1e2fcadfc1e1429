"""What `wd info` reports: versions, device, attention backend, presets with their sizes."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import torch
import wd_stpt
import wd_tokenizer
from wd_stpt.attention import xformers_usable

PACKAGES = ("wd-tokenizer", "wd-stpt", "wd-masking", "wd-data", "wd-cli", "torch")


@dataclass(frozen=True)
class Info:
    """A snapshot of the installation and the machine."""

    versions: dict[str, str]
    device: str
    attention_backend: str
    stpt_parameters: dict[str, int]
    tokenizer_parameters: dict[str, int]


def package_version(package: str) -> str:
    """The installed version of `package`, or "not installed"."""
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def _parameter_count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def collect_info() -> Info:
    """Gather versions, the default device, the active attention backend and preset sizes.

    STPTs are built on the meta device, so even `paper-1b` costs no memory; tokenizers are built for
    real (their quantizers compute buffers at construction, and the largest has 146M parameters)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backend = "xformers" if xformers_usable(torch.device(device)) else "sdpa"
    with torch.device("meta"):
        stpt = {name: _parameter_count(wd_stpt.STPT(config)) for name, config in wd_stpt.PRESETS.items()}
    tokenizer = {name: _parameter_count(wd_tokenizer.VQGAN(config)) for name, config in wd_tokenizer.PRESETS.items()}
    return Info({p: package_version(p) for p in PACKAGES}, device, backend, stpt, tokenizer)


def format_info(info: Info) -> str:
    """Render `info` as aligned text lines."""
    rows = [*info.versions.items(), ("device", info.device), ("attention", info.attention_backend)]
    rows += [(f"stpt {name}", f"{count / 1e6:,.1f}M parameters") for name, count in info.stpt_parameters.items()]
    rows += [(f"vqgan {name}", f"{count / 1e6:,.1f}M parameters") for name, count in info.tokenizer_parameters.items()]
    width = max(len(label) for label, _ in rows) + 2
    return "\n".join(f"{label:<{width}}{value}" for label, value in rows)
