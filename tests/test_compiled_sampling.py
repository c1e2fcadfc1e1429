"""A compiled STPT (and, on CUDA, a CUDA-graph replay of it) drives wd-masking's sampler exactly as eager does."""

from __future__ import annotations

import shutil
from collections.abc import Callable

import pytest
import torch
from wd_masking import SamplerConfig, image_to_video, sample
from wd_stpt import STPT, GraphedForward, STPTCondition, get_config

CODEBOOK, TEXT_DIM = 16, 12
# As in packages/wd-stpt/tests/test_compile.py: compiled float32 differs from eager by about 1e-7.
COMPILED = {"atol": 1e-5, "rtol": 1e-4}


def _model(device: str) -> STPT:
    torch.manual_seed(0)
    config = get_config("tiny", width=32, depth=2, num_heads=2, codebook_size=CODEBOOK, text_dim=TEXT_DIM,
                        position_frames=4, position_height=4, position_width=4)
    return STPT(config).to(device).eval()


def _guided_sample(model_fn: Callable, device: str) -> torch.Tensor:
    """Image-to-video with guidance from one fixed seed: the tokens after 4 steps."""
    generator = torch.Generator().manual_seed(0)
    first_frame = torch.randint(0, CODEBOOK, (1, 1, 4, 4), generator=generator)
    tokens, known = image_to_video(first_frame, num_frames=3, mask_id=CODEBOOK)
    text = torch.randn(1, 3, TEXT_DIM, generator=generator)
    cond = STPTCondition(text=text.to(device), text_mask=torch.tensor([[True, True, False]], device=device))
    return sample(model_fn, tokens.to(device), known.to(device), mask_id=CODEBOOK, cond=cond,
                  uncond=cond.unconditional(), config=SamplerConfig(steps=4, guidance_scale=2.0),
                  generator=torch.Generator(device).manual_seed(1)).tokens


def _checked_against_eager(model: STPT, fast: Callable, calls: list[int]) -> Callable:
    """model_fn running `fast`, asserting at every step that its logits are eager's on the same tokens."""

    def model_fn(tokens: torch.Tensor, cond: STPTCondition) -> torch.Tensor:
        logits = fast(tokens, cond)
        torch.testing.assert_close(logits, model(tokens, cond), **COMPILED)
        calls.append(tokens.shape[0])
        return logits

    return model_fn


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="inductor's CPU backend compiles C++ and finds no compiler")
def test_inductor_compiled_stpt_samples_like_eager() -> None:
    model, calls = _model("cpu"), []
    compiled = _guided_sample(_checked_against_eager(model, torch.compile(model), calls), "cpu")
    assert calls == [2, 2, 2, 2]  # guided: both branches in one call, every step
    assert torch.equal(compiled, _guided_sample(model, "cpu"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_replay_samples_like_eager() -> None:
    model, calls = _model("cuda"), []
    graphed = _guided_sample(_checked_against_eager(model, GraphedForward(model), calls), "cuda")
    assert calls == [2, 2, 2, 2]
    assert torch.equal(graphed, _guided_sample(model, "cuda"))
