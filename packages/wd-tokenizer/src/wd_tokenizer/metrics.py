"""Reconstruction and codebook metrics: PSNR and SSIM (torchmetrics), codebook usage and perplexity.

torchmetrics is imported inside the functions that use it: importing it takes seconds, which
`import wd_tokenizer` should not pay when it only encodes and decodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from wd_tokenizer.model import VQGAN


def psnr(reconstruction: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR in dB of float (B, 3, H, W) images in [0, 1], over the whole batch."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    return peak_signal_noise_ratio(reconstruction.float(), target.float(), data_range=1.0).item()


def structural_similarity(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean SSIM (11x11 Gaussian window) of float (B, 3, H, W) images in [0, 1], as a differentiable scalar."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(reconstruction.float(), target.float(), data_range=1.0)


def ssim(reconstruction: torch.Tensor, target: torch.Tensor) -> float:
    """Mean SSIM of float (B, 3, H, W) images in [0, 1] (see `structural_similarity`)."""
    return structural_similarity(reconstruction, target).item()


def code_histogram(ids: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Counts (K,) of each code in an int tensor of any shape (ids outside [0, K) are not counted)."""
    ids = ids.flatten().long()
    # NaN latents (a step about to be skipped) quantize to ids outside the codebook: they are not codes.
    return torch.bincount(ids[(ids >= 0) & (ids < codebook_size)], minlength=codebook_size)


def codebook_usage(counts: torch.Tensor) -> float:
    """Fraction of the K codes used at least once, from a histogram (K,)."""
    return (counts > 0).float().mean().item()


def codebook_perplexity(counts: torch.Tensor) -> float:
    """exp(entropy) of the code distribution from a histogram (K,): K when all codes are equally used, 1 for one."""
    probs = counts.double() / counts.sum().clamp(min=1)
    entropy = -(probs * probs.clamp(min=1e-30).log()).sum()
    return entropy.exp().item()


@dataclass
class ReconstructionReport:
    psnr: float
    ssim: float
    codebook_usage: float
    perplexity: float


@torch.no_grad()
def evaluate(model: VQGAN, batches: list[torch.Tensor]) -> ReconstructionReport:
    """Round-trip float (B, 3, H, W) [0, 1] batches through `model.encode`/`decode`; metrics over all of them."""
    if not batches:
        raise ValueError("evaluate needs at least one batch")
    device, _ = model.device_and_dtype()
    was_training = model.training
    model.eval()  # an EMA codebook must not update on evaluation data
    originals, recons, counts = [], [], torch.zeros(model.codebook_size, dtype=torch.long)
    for batch in batches:
        batch = batch.to(device)
        ids = model.encode(batch)
        counts += code_histogram(ids.cpu(), model.codebook_size)
        originals.append(batch.float().cpu())
        recons.append(model.decode(ids).float().cpu())
    model.train(was_training)
    target, recon = torch.cat(originals), torch.cat(recons)
    return ReconstructionReport(psnr(recon, target), ssim(recon, target), codebook_usage(counts),
                                codebook_perplexity(counts))
