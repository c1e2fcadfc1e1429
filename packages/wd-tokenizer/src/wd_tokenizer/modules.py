"""Taming / open-muse encoder and decoder; submodule names match open-muse so its checkpoints load strictly."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

if TYPE_CHECKING:
    from wd_tokenizer.model import VQGANConfig

# open-muse and diffusers' VQModel both use this eps; a different one moves decodes by ~4e-3.
NORM_EPS = 1e-6


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=NORM_EPS, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice plus a (1x1 when channels change) shortcut: (B, C_in, H, W) -> (B, C_out, H, W)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = group_norm(out_channels, groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        shortcut = x if self.nin_shortcut is None else self.nin_shortcut(x)
        return shortcut + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with 1x1-conv projections: (B, C, H, W) -> same."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, kernel_size=1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height = x.shape[2]
        h = self.norm(x)
        q, k, v = (rearrange(proj(h), "b c h w -> b 1 (h w) c") for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj_out(rearrange(out, "b 1 (h w) c -> b c h w", h=height))


class Downsample(nn.Module):
    """Stride-2 3x3 conv after asymmetric (0, 1, 0, 1) zero padding, as taming: (B, C, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest 2x upsampling then a 3x3 conv: (B, C, H, W) -> (B, C, 2H, 2W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ResolutionLevel(nn.Module):
    """Res blocks (each followed by attention when `attend`) then an optional resampler; named like open-muse."""

    def __init__(
        self, channels: list[int], config: VQGANConfig, attend: bool, resample: type[nn.Module] | None, name: str
    ) -> None:
        super().__init__()
        groups, dropout = config.norm_groups, config.dropout
        self.block = nn.ModuleList(
            ResnetBlock(c_in, c_out, groups, dropout) for c_in, c_out in zip(channels[:-1], channels[1:])
        )
        self.attn = nn.ModuleList(AttnBlock(c, groups) for c in channels[1:]) if attend else nn.ModuleList()
        # open-muse registers the resampler as `downsample` / `upsample`; keep its name for strict loading.
        setattr(self, name, resample(channels[-1]) if resample is not None else None)
        self.resample_name = name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if self.attn:
                x = self.attn[i](x)
        resample = getattr(self, self.resample_name)
        return x if resample is None else resample(x)


class MidBlock(nn.Module):
    """ResNet, optional attention, ResNet at the lowest resolution."""

    def __init__(self, channels: int, config: VQGANConfig) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, config.norm_groups, config.dropout)
        self.attn_1 = None if config.no_attn_mid_block else AttnBlock(channels, config.norm_groups)
        self.block_2 = ResnetBlock(channels, channels, config.norm_groups, config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block_1(x)
        if self.attn_1 is not None:
            x = self.attn_1(x)
        return self.block_2(x)


class Encoder(nn.Module):
    """Pixels in model range (B, 3, H, W) -> latents (B, z_channels, H/f, W/f)."""

    def __init__(self, config: VQGANConfig) -> None:
        super().__init__()
        widths = [config.hidden_channels * m for m in config.channel_mult]
        levels = len(widths)
        self.conv_in = nn.Conv2d(3, config.hidden_channels, kernel_size=3, padding=1)
        down, block_in, resolution = [], config.hidden_channels, config.resolution
        for i, width in enumerate(widths):
            channels = [block_in] + [width] * config.num_res_blocks
            resample = Downsample if i != levels - 1 else None
            attend = resolution in config.attn_resolutions
            down.append(ResolutionLevel(channels, config, attend, resample, "downsample"))
            block_in, resolution = width, resolution // 2
        self.down = nn.ModuleList(down)
        self.mid = MidBlock(widths[-1], config)
        self.norm_out = group_norm(widths[-1], config.norm_groups)
        self.conv_out = nn.Conv2d(widths[-1], config.z_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for level in self.down:
            x = level(x)
        x = self.mid(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class PatchEncoder(nn.Module):
    """Pixels in model range (B, 3, H, W) -> latents (B, z_channels, H/f, W/f), each f x f patch on its own (a
    strided patch embedding, then per-position residual MLPs): a token's code depends on its patch's pixels alone.

    The conv encoder's receptive field and GroupNorm's image-wide statistics make a patch's code depend on what
    lies around it, so a plain background patch gets one of dozens of codes as an object moves nearby
    (docs/benchmarks.md, quickstart section): noise the STPT would have to predict. Here equal patches always get
    equal codes; the decoder still sees the neighbourhood.
    """

    def __init__(self, config: VQGANConfig) -> None:
        super().__init__()
        width = config.hidden_channels * config.channel_mult[-1]
        factor = config.downsample_factor
        self.conv_in = nn.Conv2d(3, width, kernel_size=factor, stride=factor)
        self.block = nn.ModuleList(
            nn.Sequential(nn.SiLU(), nn.Conv2d(width, 2 * width, kernel_size=1), nn.SiLU(),
                          nn.Conv2d(2 * width, width, kernel_size=1))
            for _ in range(config.num_res_blocks + 1)
        )
        self.conv_out = nn.Conv2d(width, config.z_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.block:
            x = x + block(x)
        return self.conv_out(F.silu(x))


class Decoder(nn.Module):
    """Latents (B, z_channels, h, w) -> pixels in model range (B, 3, h*f, w*f); `up[0]` is the full-resolution level."""

    def __init__(self, config: VQGANConfig) -> None:
        super().__init__()
        widths = [config.hidden_channels * m for m in config.channel_mult]
        levels = len(widths)
        self.conv_in = nn.Conv2d(config.z_channels, widths[-1], kernel_size=3, padding=1)
        self.mid = MidBlock(widths[-1], config)
        up = []
        for i, width in enumerate(widths):
            block_in = widths[min(i + 1, levels - 1)]
            channels = [block_in] + [width] * (config.num_res_blocks + 1)
            resolution = config.resolution // 2**i
            resample = Upsample if i != 0 else None
            attend = resolution in config.attn_resolutions
            up.append(ResolutionLevel(channels, config, attend, resample, "upsample"))
        self.up = nn.ModuleList(up)
        self.norm_out = group_norm(widths[0], config.norm_groups)
        self.conv_out = nn.Conv2d(widths[0], 3, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            x = level(x)
        return self.conv_out(F.silu(self.norm_out(x)))
