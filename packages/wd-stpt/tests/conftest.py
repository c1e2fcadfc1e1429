"""Shared fixtures: tiny configs and random inputs so every test runs in milliseconds on a CPU."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from wd_stpt import STPT, STPTConfig, get_config

TEXT_DIM, ACTION_DIM, CODEBOOK = 12, 3, 16


@pytest.fixture
def make_config() -> Callable[..., STPTConfig]:
    """Factory for a tiny config (width 32, 2 heads, 16 codes); keyword arguments override fields."""

    def make(**overrides) -> STPTConfig:
        fields = {"width": 32, "depth": 2, "num_heads": 2, "codebook_size": CODEBOOK, "text_dim": TEXT_DIM,
                  "action_dim": ACTION_DIM, "position_frames": 4, "position_height": 4, "position_width": 4}
        return get_config("tiny", **(fields | overrides))

    return make


@pytest.fixture
def make_model(make_config) -> Callable[..., STPT]:
    """Factory for a seeded tiny STPT in eval mode."""

    def make(seed: int = 0, **overrides) -> STPT:
        torch.manual_seed(seed)
        return STPT(make_config(**overrides)).eval()

    return make


@pytest.fixture
def random_tokens() -> Callable[..., torch.Tensor]:
    """Factory for int64 tokens (B, N, h, w) in [0, codebook_size] (the mask id included)."""

    def make(batch: int, frames: int, height: int, width: int, seed: int = 0,
             codebook_size: int = CODEBOOK) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return torch.randint(0, codebook_size + 1, (batch, frames, height, width), generator=generator)

    return make


@pytest.fixture
def dims() -> tuple[int, int]:
    """(text_dim, action_dim) of `make_config`."""
    return TEXT_DIM, ACTION_DIM
