"""Starting points for the generation tasks (paper section 3.1): each returns (tokens, known).

tokens int64 (B, N, h, w) hold the given codes and [MASK] (= mask_id) elsewhere; known bool
(B, N, h, w) is True where a token is given. Pass both to `wd_masking.sample` (or, for a video
longer than the network's window, to the caller's windowing).

| task | start |
|---|---|
| text to video, text and actions together | `text_to_video` (actions travel in the sampler's cond) |
| image to video, prediction from k given frames | `image_to_video` |
| action to video | `action_to_video` |
| frame interpolation (every k-th frame given, or the first and the last) | `frame_interpolation` |
| inpainting | `inpainting` (+ `box_region`) |
| outpainting (a border of every frame, or the sides of a narrower video) | `outpainting` |
| stylization | `stylization` |
"""

import torch
from torch import Tensor

from wd_masking._ranking import lowest_k_mask

TaskStart = tuple[Tensor, Tensor]


def _check_tokens(tokens: Tensor, dims: int, what: str) -> None:
    if tokens.dim() != dims or tokens.dtype != torch.int64:
        raise ValueError(
            f"{what} must be int64 with {dims} dims, got {tokens.dtype} {tuple(tokens.shape)}"
        )


def text_to_video(
    batch_size: int,
    num_frames: int,
    height: int,
    width: int,
    mask_id: int,
    device: torch.device | str | None = None,
) -> TaskStart:
    """Nothing known: the prompt alone drives generation."""
    if min(batch_size, num_frames, height, width) < 1:
        raise ValueError(f"all sizes must be >= 1, got {(batch_size, num_frames, height, width)}")
    shape = (batch_size, num_frames, height, width)
    tokens = torch.full(shape, mask_id, dtype=torch.int64, device=device)
    return tokens, torch.zeros(shape, dtype=torch.bool, device=device)


def image_to_video(prompt_frames: Tensor, num_frames: int, mask_id: int) -> TaskStart:
    """The k given frames (B, k, h, w) open the video; the remaining N - k frames are unknown."""
    _check_tokens(prompt_frames, 4, "prompt_frames (B, k, h, w)")
    batch_size, num_given, height, width = prompt_frames.shape
    if not 1 <= num_given <= num_frames:
        raise ValueError(f"need 1 <= given frames ({num_given}) <= num_frames ({num_frames})")
    tokens = torch.full(
        (batch_size, num_frames, height, width), mask_id, dtype=torch.int64, device=prompt_frames.device
    )
    tokens[:, :num_given] = prompt_frames
    known = torch.zeros_like(tokens, dtype=torch.bool)
    known[:, :num_given] = True
    return tokens, known


def action_to_video(first_frame: Tensor, num_frames: int, mask_id: int) -> TaskStart:
    """First frame (B, h, w) known, the rest unknown; the actions travel in the sampler's cond."""
    _check_tokens(first_frame, 3, "first_frame (B, h, w)")
    return image_to_video(first_frame[:, None], num_frames, mask_id)


def frame_interpolation(keyframes: Tensor, every: int, mask_id: int) -> TaskStart:
    """Keyframes (B, M, h, w) become frames 0, every, 2 * every, ... of a (B, (M - 1) * every + 1, h, w) video;
    the frames between them are unknown. The first and the last frame of an N-frame clip: M = 2, every = N - 1."""
    _check_tokens(keyframes, 4, "keyframes (B, M, h, w)")
    batch_size, num_keys, height, width = keyframes.shape
    if num_keys < 2 or every < 2:
        raise ValueError(f"need at least 2 keyframes and every >= 2 (a frame to fill between them), got "
                         f"{num_keys} keyframes, every={every}")
    num_frames = (num_keys - 1) * every + 1
    tokens = torch.full((batch_size, num_frames, height, width), mask_id, dtype=torch.int64, device=keyframes.device)
    tokens[:, ::every] = keyframes
    known = torch.zeros_like(tokens, dtype=torch.bool)
    known[:, ::every] = True
    return tokens, known


def box_region(
    height: int, width: int, box: tuple[int, int, int, int], device: torch.device | str | None = None
) -> Tensor:
    """bool (height, width), True inside box = (top, left, bottom, right), bottom/right exclusive."""
    top, left, bottom, right = box
    if not (0 <= top < bottom <= height and 0 <= left < right <= width):
        raise ValueError(
            f"box {box} must satisfy 0 <= top < bottom <= {height} and 0 <= left < right <= {width}"
        )
    region = torch.zeros(height, width, dtype=torch.bool, device=device)
    region[top:bottom, left:right] = True
    return region


def inpainting(video: Tensor, region: Tensor, mask_id: int, downsample_factor: int = 1) -> TaskStart:
    """Regenerate `region` of video tokens (B, N, h, w); keep everything else.

    region is bool (H, W), (N, H, W) or (B, N, H, W) with H = h * f and W = w * f for
    f = downsample_factor: f = 1 for a region on the token grid, the tokenizer's factor for one
    in pixels. A token is unknown if any pixel of its f x f cell is in the region, so the whole
    region is regenerated.
    """
    _check_tokens(video, 4, "video (B, N, h, w)")
    height, width = video.shape[-2:]
    f = downsample_factor
    if f < 1:
        raise ValueError(f"downsample_factor must be >= 1, got {f}")
    if region.dtype != torch.bool or region.dim() not in (2, 3, 4):
        raise ValueError(
            f"region must be bool (H, W), (N, H, W) or (B, N, H, W), got {region.dtype} {tuple(region.shape)}"
        )
    if region.shape[-2:] != (height * f, width * f):
        raise ValueError(
            f"region is {tuple(region.shape[-2:])}, expected {(height * f, width * f)} "
            f"= token grid {(height, width)} x downsample_factor {f}"
        )
    cells = region.unflatten(-1, (width, f)).unflatten(-3, (height, f))  # (..., h, f, w, f)
    unknown = cells.any(dim=-1).any(dim=-2).to(video.device)
    if unknown.shape != video.shape[video.dim() - unknown.dim() :]:
        raise ValueError(f"region {tuple(region.shape)} does not match video {tuple(video.shape)}")
    unknown = unknown.expand_as(video)
    return video.masked_fill(unknown, mask_id), ~unknown


def stylization(
    video: Tensor, mask_fraction: float, mask_id: int, generator: torch.Generator | None = None
) -> TaskStart:
    """Mask round(mask_fraction * N*h*w) random tokens per sample of video (B, N, h, w).

    The network redraws them under the (style) prompt while the rest anchors the content.
    """
    _check_tokens(video, 4, "video (B, N, h, w)")
    if not 0.0 <= mask_fraction <= 1.0:
        raise ValueError(f"mask_fraction must be in [0, 1], got {mask_fraction}")
    batch_size = video.shape[0]
    length = video[0].numel()
    counts = torch.full((batch_size,), round(mask_fraction * length), device=video.device)
    scores = torch.rand(batch_size, length, generator=generator, device=video.device)
    unknown = lowest_k_mask(scores, counts).view_as(video)
    return video.masked_fill(unknown, mask_id), ~unknown


def outpainting(
    video: Tensor, keep: tuple[int, int, int, int], mask_id: int, downsample_factor: int = 1
) -> TaskStart:
    """Regenerate everything of video tokens (B, N, h, w) outside the box keep = (top, left, bottom, right),
    given in pixels of the f = downsample_factor grid (H = h * f, bottom/right exclusive): a token is kept only
    when its whole f x f cell lies inside the box. A border of every frame, or the sides of a narrower video
    placed in the frame."""
    _check_tokens(video, 4, "video (B, N, h, w)")
    height, width = video.shape[-2] * downsample_factor, video.shape[-1] * downsample_factor
    outside = ~box_region(height, width, keep, device=video.device)
    if not outside.any():
        raise ValueError(f"keep box {keep} covers the whole {height}x{width} frame: nothing to outpaint")
    return inpainting(video, outside, mask_id, downsample_factor)
