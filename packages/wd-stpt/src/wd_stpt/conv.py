"""The 3D convolution over (N, h, w) in three shapes, each exact in image mode.

Activations stay (B, N, h, w, C); each kernel runs on a permuted *view* of them that is exactly
PyTorch's channels-last layout, oneDNN's fast path on CPU, so no copies. Image samples use only the
centre temporal tap of every kernel (selected with torch.where), so their frames never mix.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def _frames_view(x: torch.Tensor) -> torch.Tensor:
    """(B, N, h, w, C) -> (B*N, C, h, w) channels-last view: frames as batch."""
    return x.flatten(0, 1).permute(0, 3, 1, 2)


def _time_view(x: torch.Tensor) -> torch.Tensor:
    """(B, N, h, w, C) -> (B, C, N, h*w) channels-last view: a (3, 1) kernel convolves over time."""
    return x.flatten(2, 3).permute(0, 3, 1, 2)


def _unview(y: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Channels-last (X, C, Y, Z) conv output -> (B, N, h, w, C_out)."""
    return y.permute(0, 2, 3, 1).reshape(*shape[:4], -1)


def _video_or_image(
    video: torch.Tensor | None, video_out: torch.Tensor, image_out: Callable[[], torch.Tensor]
) -> torch.Tensor:
    """Per-sample select: `video_out` for videos, `image_out()` (centre taps only) for image samples."""
    if video is None:
        return video_out
    return torch.where(video[:, None, None, None, None], video_out, image_out())


def spatial_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A 3x3 conv2d on every frame: (B, N, h, w, C) -> (B, N, h, w, C_out)."""
    return _unview(conv(_frames_view(x)), x.shape)


def temporal_conv(conv: nn.Conv2d, x: torch.Tensor, video: torch.Tensor | None) -> torch.Tensor:
    """A (3, 1) conv2d over time, centre tap only for image samples: (B, N, h, w, C) -> same shape."""
    return _video_or_image(
        video,
        _unview(conv(_time_view(x)), x.shape),
        lambda: _unview(F.conv2d(_time_view(x), conv.weight[:, :, 1:2], conv.bias, groups=conv.groups), x.shape),
    )


class FullConv3d(nn.Module):
    """Dense 3x3x3 convolution (54 C^2 FLOP per token)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(width, width, 3, padding=1)

    def forward(self, x: torch.Tensor, video: torch.Tensor | None) -> torch.Tensor:
        """x (B, N, h, w, C) -> (B, N, h, w, C); video (B,) bool, False = image sample."""
        out = self.conv(x.permute(0, 4, 1, 2, 3)).permute(0, 2, 3, 4, 1)
        centre = self.conv.weight[:, :, 1]
        return _video_or_image(
            video, out, lambda: _unview(F.conv2d(_frames_view(x), centre, self.conv.bias, padding=1), x.shape)
        )


class FactorizedConv3d(nn.Module):
    """Dense 1x3x3 spatial then dense 3x1x1 temporal convolution (24 C^2 FLOP per token)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.spatial = nn.Conv2d(width, width, 3, padding=1)
        self.temporal = nn.Conv2d(width, width, (3, 1), padding=(1, 0))

    def forward(self, x: torch.Tensor, video: torch.Tensor | None) -> torch.Tensor:
        return temporal_conv(self.temporal, spatial_conv(self.spatial, x), video)


class DepthwiseConv3d(nn.Module):
    """Depthwise 1x3x3 then depthwise 3x1x1 convolution, then a pointwise linear (2 C^2 FLOP per token)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.spatial = nn.Conv2d(width, width, 3, padding=1, groups=width)
        self.temporal = nn.Conv2d(width, width, (3, 1), padding=(1, 0), groups=width)
        self.pointwise = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor, video: torch.Tensor | None) -> torch.Tensor:
        return self.pointwise(temporal_conv(self.temporal, spatial_conv(self.spatial, x), video))


CONVOLUTIONS: dict[str, type[nn.Module]] = {
    "full": FullConv3d,
    "factorized": FactorizedConv3d,
    "depthwise": DepthwiseConv3d,
}
