"""One STPT layer: 3D convolution, spatial-temporal window self-attention, per-frame cross-attention, MLP.

The block's linears have no bias (as in PaLM and LLaMA): on CPU every bias is one more memory pass
over the activations, which measurably costs throughput and buys nothing after a LayerNorm.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from einops import rearrange
from torch import nn

from wd_stpt.attention import attention
from wd_stpt.config import STPTConfig
from wd_stpt.conv import CONVOLUTIONS


class Prompt(NamedTuple):
    """Multimodal prompt tokens at model width, before each block's key/value projection."""

    shared: torch.Tensor  # (B, S, C): null token + text tokens, the same for every frame
    per_frame: torch.Tensor | None  # (B, N, 1, C): one action token per frame, or None
    key_mask: torch.Tensor  # (B, N, S [+ 1]) bool, True = a real key


def image_attention_mask(is_image: torch.Tensor, frames: int, frame_tokens: int) -> torch.Tensor:
    """(B,) bool -> (B, 1, L, L) bool with L = frames * frame_tokens: block-diagonal by frame for image
    samples (no token sees another frame), all True for videos. Broadcasts over windows and heads."""
    frame = torch.arange(frames * frame_tokens, device=is_image.device) // frame_tokens
    same_frame = frame[:, None] == frame[None, :]
    return same_frame | ~is_image[:, None, None, None]


class WindowSelfAttention(nn.Module):
    """Self-attention inside each of the s*s windows of N x h/s x w/s tokens, all windows in one call."""

    def __init__(self, config: STPTConfig) -> None:
        super().__init__()
        self.num_heads, self.stride, self.backend = config.num_heads, config.patch_stride, config.attention_backend
        self.qkv = nn.Linear(config.width, 3 * config.width, bias=False)
        self.proj = nn.Linear(config.width, config.width, bias=False)

    def forward(self, x: torch.Tensor, frame_mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, N, h, w, C), frame_mask (B, 1, L, L) or None -> (B, N, h, w, C)."""
        frames, height = x.shape[1], x.shape[2]
        s = self.stride
        # Windows and heads share SDPA's second batch dim, so a per-sample mask broadcasts without copies.
        q, k, v = rearrange(
            self.qkv(x), "b n (sh hh) (sw ww) (three heads d) -> three b (sh sw heads) (n hh ww) d",
            sh=s, sw=s, three=3, heads=self.num_heads,
        )
        out = attention(q, k, v, frame_mask, self.backend)
        out = rearrange(
            out, "b (sh sw heads) (n hh ww) d -> b n (sh hh) (sw ww) (heads d)",
            sh=s, sw=s, heads=self.num_heads, n=frames, hh=height // s,
        )
        return self.proj(out)


class CrossAttention(nn.Module):
    """Each frame's tokens attend to that frame's prompt (frames as batch)."""

    def __init__(self, config: STPTConfig) -> None:
        super().__init__()
        self.num_heads, self.backend = config.num_heads, config.attention_backend
        self.q = nn.Linear(config.width, config.width, bias=False)
        self.kv = nn.Linear(config.width, 2 * config.width, bias=False)
        self.proj = nn.Linear(config.width, config.width, bias=False)

    def forward(self, x: torch.Tensor, prompt: Prompt) -> torch.Tensor:
        """x (B, N, h, w, C) -> (B, N, h, w, C)."""
        batch, frames, height = x.shape[0], x.shape[1], x.shape[2]
        q = rearrange(self.q(x), "b n h w (heads d) -> (b n) heads (h w) d", heads=self.num_heads)
        # Shared text keys are projected once per sample, then broadcast over frames.
        kv = self.kv(prompt.shared)[:, None].expand(batch, frames, -1, -1)
        if prompt.per_frame is not None:
            kv = torch.cat([kv, self.kv(prompt.per_frame)], dim=2)
        k, v = rearrange(kv, "b n p (two heads d) -> two (b n) heads p d", two=2, heads=self.num_heads)
        mask = rearrange(prompt.key_mask, "b n p -> (b n) 1 1 p")
        out = attention(q, k, v, mask, self.backend)
        return self.proj(rearrange(out, "(b n) heads (h w) d -> b n h w (heads d)", b=batch, h=height))


class MLP(nn.Module):
    """Position-wise feed-forward: (..., C) -> (..., C) through a GELU hidden layer of mlp_ratio * C."""

    def __init__(self, config: STPTConfig) -> None:
        super().__init__()
        hidden = int(config.width * config.mlp_ratio)
        self.net = nn.Sequential(nn.Linear(config.width, hidden, bias=False), nn.GELU(),
                                 nn.Linear(hidden, config.width, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class STPTBlock(nn.Module):
    """Pre-norm residual layer: conv (optional) -> window self-attention -> cross-attention -> MLP."""

    def __init__(self, config: STPTConfig) -> None:
        super().__init__()
        self.conv = CONVOLUTIONS[config.conv](config.width) if config.conv != "none" else None
        self.norm_conv = nn.LayerNorm(config.width) if self.conv is not None else None
        self.norm_attn, self.attn = nn.LayerNorm(config.width), WindowSelfAttention(config)
        self.norm_cross, self.cross = nn.LayerNorm(config.width), CrossAttention(config)
        self.norm_mlp, self.mlp = nn.LayerNorm(config.width), MLP(config)

    def forward(
        self, x: torch.Tensor, prompt: Prompt, frame_mask: torch.Tensor | None, video: torch.Tensor | None
    ) -> torch.Tensor:
        """x (B, N, h, w, C) -> (B, N, h, w, C); video (B,) bool is False for image samples."""
        if self.conv is not None:
            x = x + self.conv(self.norm_conv(x), video)
        x = x + self.attn(self.norm_attn(x), frame_mask)
        x = x + self.cross(self.norm_cross(x), prompt)
        return x + self.mlp(self.norm_mlp(x))
