"""Periodic sample videos: the first samples of the first source, regenerated from their prompts alone
(text-to-video, or action-to-video when they carry actions) with fixed seeds, into `run_dir/samples/`."""

from __future__ import annotations

from pathlib import Path

import torch
from wd_data import write_video
from wd_masking import SamplerConfig, action_to_video, sample, text_to_video
from wd_stpt import STPT, STPTCondition
from wd_tokenizer import VQGAN

from wd_cli.train.data import TokenBatch


@torch.no_grad()
def sample_tokens(model: STPT, batch: TokenBatch, steps: int, seed: int) -> torch.Tensor:
    """Generate tokens (B, N, h, w) for the prompts of `batch` in `steps` MaskGIT steps; the first frame is given
    when the batch has actions."""
    was_training = model.training
    model.eval()
    codebook = model.config.codebook_size
    batch_size, frames, height, width = batch.tokens.shape
    if batch.actions is not None:
        tokens, known = action_to_video(batch.tokens[:, 0], frames, codebook)
    else:
        tokens, known = text_to_video(batch_size, frames, height, width, codebook, device=batch.tokens.device)
    cond = STPTCondition(text=batch.text, text_mask=batch.text_mask, actions=batch.actions, is_image=batch.is_image)
    generator = torch.Generator(batch.tokens.device).manual_seed(seed)
    result = sample(model, tokens, known, mask_id=codebook, cond=cond, config=SamplerConfig(steps=steps),
                    generator=generator)
    model.train(was_training)
    return result.tokens


def write_sample_videos(tokenizer: VQGAN, tokens: torch.Tensor, run_dir: Path, step: int,
                        fps: float = 8.0) -> list[Path]:
    """Decode tokens (B, N, h, w) and write `run_dir/samples/step_XXXXXXX_i.mp4`."""
    folder = run_dir / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    return [write_video(folder / f"step_{step:07d}_{index}.mp4", tokenizer.decode_video(ids), fps=fps)
            for index, ids in enumerate(tokens)]
