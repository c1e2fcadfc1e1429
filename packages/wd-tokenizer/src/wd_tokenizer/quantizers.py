"""Quantizers: latents (B, D, h, w) -> (quantized (B, D, h, w), ids int64 (B, h, w), auxiliary loss scalar).

`L2Quantizer` is open-muse's plain nearest-neighbour lookup, reproduced operation for operation so converted
open-muse / aMUSEd checkpoints give their exact ids. The others wrap vector-quantize-pytorch for training new
tokenizers whose codebooks stay in use; it is imported when one of them is built, because importing it costs
about a second that loading an open-muse checkpoint does not need.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

if TYPE_CHECKING:
    from wd_tokenizer.model import VQGANConfig

QuantizerOutput = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class L2Quantizer(nn.Module):
    """Euclidean nearest code with a straight-through gradient; parameter `embedding.weight` (K, D) as open-muse."""

    def __init__(self, codebook_size: int, dim: int, commitment_weight: float) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.commitment_weight = commitment_weight
        self.embedding = nn.Embedding(codebook_size, dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / codebook_size, 1.0 / codebook_size)

    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, D, h, w) -> ids (B, h, w), using open-muse's addmm form of |z|^2 + |e|^2 - 2 z.e."""
        flat = rearrange(z, "b d h w -> (b h w) d").float()
        codes = self.embedding.weight.float().t()
        distances = torch.addmm(
            flat.pow(2).sum(dim=1, keepdim=True) + codes.pow(2).sum(dim=0, keepdim=True), flat, codes, alpha=-2.0
        )
        return rearrange(distances.argmin(dim=1), "(b h w) -> b h w", b=z.shape[0], h=z.shape[2])

    def codes(self, ids: torch.Tensor) -> torch.Tensor:
        """Ids (B, h, w) -> code vectors (B, D, h, w)."""
        return rearrange(self.embedding(ids), "b h w d -> b d h w").contiguous()

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        ids = self.lookup(z)
        quantized = self.codes(ids).to(z.dtype)
        # Codebook term pulls codes to the encoder; commitment term (weighted) keeps the encoder near its codes.
        loss = F.mse_loss(quantized, z.detach()) + self.commitment_weight * F.mse_loss(z, quantized.detach())
        return z + (quantized - z).detach(), ids, loss


class VQQuantizer(nn.Module):
    """vector-quantize-pytorch `VectorQuantize` with the options that keep large codebooks alive."""

    def __init__(self, config: VQGANConfig) -> None:
        from vector_quantize_pytorch import VectorQuantize

        super().__init__()
        self.codebook_size = config.num_embeddings
        self.vq = VectorQuantize(
            dim=config.embed_dim,
            codebook_size=config.num_embeddings,
            codebook_dim=config.codebook_dim,
            use_cosine_sim=config.use_cosine_sim,
            kmeans_init=config.kmeans_init,
            threshold_ema_dead_code=config.threshold_ema_dead_code,
            decay=config.ema_decay,
            commitment_weight=config.commitment_weight,
            accept_image_fmap=True,
        )

    def codes(self, ids: torch.Tensor) -> torch.Tensor:
        codes = self.vq.project_out(self.vq.codebook[ids])
        return rearrange(codes, "b h w d -> b d h w")

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        quantized, ids, loss = self.vq(z)
        return quantized, ids, loss.sum()


class FSQQuantizer(nn.Module):
    """Finite scalar quantization: no codebook to collapse; `codebook_size` = prod(levels)."""

    def __init__(self, config: VQGANConfig) -> None:
        from vector_quantize_pytorch import FSQ

        super().__init__()
        if not config.fsq_levels:
            raise ValueError("quantizer 'fsq' needs fsq_levels, e.g. [8, 8, 8, 5, 5, 5] for 64000 codes")
        self.codebook_size = config.codebook_size
        self.fsq = FSQ(levels=list(config.fsq_levels), dim=config.embed_dim, channel_first=True)

    def codes(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fsq.indices_to_codes(ids)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        quantized, ids = self.fsq(z)
        return quantized, ids, z.new_zeros(())


class LFQQuantizer(nn.Module):
    """Lookup-free quantization (sign bits of log2(K) projected channels) with its entropy auxiliary loss."""

    def __init__(self, config: VQGANConfig) -> None:
        from vector_quantize_pytorch import LFQ

        super().__init__()
        self.codebook_size = config.num_embeddings
        self.lfq = LFQ(
            dim=config.embed_dim,
            codebook_size=config.num_embeddings,
            commitment_loss_weight=config.commitment_weight,
            channel_first=True,
        )

    def codes(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lfq.indices_to_codes(ids)

    def forward(self, z: torch.Tensor) -> QuantizerOutput:
        quantized, ids, aux_loss = self.lfq(z)
        return quantized, ids, aux_loss


def build_quantizer(config: VQGANConfig) -> nn.Module:
    """The quantizer named by `config.quantizer` ('l2', 'vq', 'fsq' or 'lfq')."""
    if config.quantizer == "l2":
        return L2Quantizer(config.num_embeddings, config.embed_dim, config.commitment_weight)
    builders = {"vq": VQQuantizer, "fsq": FSQQuantizer, "lfq": LFQQuantizer}
    if config.quantizer not in builders:
        raise ValueError(f"unknown quantizer {config.quantizer!r}; expected one of 'l2', 'vq', 'fsq', 'lfq'")
    return builders[config.quantizer](config)
