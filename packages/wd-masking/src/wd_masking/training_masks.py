"""Training masks (paper section 3.3): which tokens the network must predict.

Masks are bool (B, N, h, w) with True = replaced by [MASK] and predicted. Note the opposite
polarity of the sampler's `known` mask (True = given).
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from wd_masking._ranking import lowest_k_mask
from wd_masking.schedules import get_schedule

Device = torch.device | str | None


@dataclass
class MaskMixture:
    """Weights (any scale) of the training mask patterns; `MaskMixture.paper()` is the paper's alone.

    The shared mask never yields the inference patterns "first frames given, the rest unknown"
    or "one region unknown in every frame", so the default mixes those in.
    """

    shared: float = 0.8
    prefix: float = 0.1
    box: float = 0.1
    schedule: str = "cosine"

    def __post_init__(self) -> None:
        weights = (self.shared, self.prefix, self.box)
        if not all(math.isfinite(weight) and weight >= 0 for weight in weights) or sum(weights) <= 0:
            raise ValueError(f"mixture weights must be finite and >= 0 with a positive sum, got {weights}")
        get_schedule(self.schedule)

    @classmethod
    def paper(cls) -> "MaskMixture":
        """The paper's behaviour: only the mask shared across frames."""
        return cls(shared=1.0, prefix=0.0, box=0.0)


def _check_grid(batch_size: int, num_frames: int, height: int, width: int) -> None:
    if min(batch_size, num_frames, height, width) < 1:
        raise ValueError(
            f"batch_size, num_frames, height, width must be >= 1, "
            f"got {(batch_size, num_frames, height, width)}"
        )


def shared_frame_mask(
    batch_size: int,
    num_frames: int,
    height: int,
    width: int,
    schedule: str = "cosine",
    generator: torch.Generator | None = None,
    device: Device = None,
) -> Tensor:
    """The paper's mask: one spatial mask per sample, repeated on every frame -> bool (B, N, h, w).

    Per sample r ~ U(0, 1) and max(1, round(schedule(r) * h * w)) positions are masked. The
    paper prints the count as (2hw/pi)(1 - r^2)^(-1/2), which is garbled: that is h*w times the
    density of cos(pi/2 r), not a count, and exceeds h*w as r -> 1. The paper follows MaskGIT,
    whose rule this is. Sharing the mask across frames keeps a token from being copied from
    its neighbour frame.
    """
    _check_grid(batch_size, num_frames, height, width)
    area = height * width
    ratio = torch.rand(batch_size, generator=generator, device=device)
    counts = (get_schedule(schedule)(ratio) * area).round().long().clamp(min=1)
    scores = torch.rand(batch_size, area, generator=generator, device=device)
    spatial = lowest_k_mask(scores, counts).view(batch_size, 1, height, width)
    return spatial.expand(batch_size, num_frames, height, width).contiguous()


def prefix_frames_mask(
    batch_size: int,
    num_frames: int,
    height: int,
    width: int,
    schedule: str = "cosine",
    generator: torch.Generator | None = None,
    device: Device = None,
) -> Tensor:
    """First k frames fully visible (k ~ U{1..N-1} per sample), the shared mask on the rest.

    Teaches image-to-video and continuation. With N = 1 there is no prefix to give: k = 0.
    bool (B, N, h, w).
    """
    shared = shared_frame_mask(batch_size, num_frames, height, width, schedule, generator, device)
    num_known = 1 + (torch.rand(batch_size, generator=generator, device=device) * (num_frames - 1)).long()
    num_known = num_known.clamp(max=num_frames - 1)  # N = 1: no prefix
    frame = torch.arange(num_frames, device=shared.device)
    return shared & (frame[None, :] >= num_known[:, None])[:, :, None, None]


def _random_spans(batch_size: int, size: int, generator: torch.Generator | None, device: Device) -> Tensor:
    """bool (B, size): one random contiguous run of 1..size positions per row."""
    length = 1 + (torch.rand(batch_size, generator=generator, device=device) * size).long()
    start = (torch.rand(batch_size, generator=generator, device=device) * (size - length + 1)).long()
    position = torch.arange(size, device=length.device)
    return (position >= start[:, None]) & (position < (start + length)[:, None])


def box_mask(
    batch_size: int,
    num_frames: int,
    height: int,
    width: int,
    generator: torch.Generator | None = None,
    device: Device = None,
) -> Tensor:
    """One random box per sample (sides uniform in 1..h and 1..w), masked in every frame.

    Teaches inpainting. bool (B, N, h, w).
    """
    _check_grid(batch_size, num_frames, height, width)
    rows = _random_spans(batch_size, height, generator, device)
    cols = _random_spans(batch_size, width, generator, device)
    spatial = rows[:, None, :, None] & cols[:, None, None, :]
    return spatial.expand(batch_size, num_frames, height, width).contiguous()


def sample_training_mask(
    batch_size: int,
    num_frames: int,
    height: int,
    width: int,
    mixture: MaskMixture | None = None,
    generator: torch.Generator | None = None,
    device: Device = None,
) -> Tensor:
    """Draw each sample's pattern from `mixture` (default MaskMixture()) -> bool (B, N, h, w)."""
    mixture = mixture or MaskMixture()
    shape = (batch_size, num_frames, height, width)
    patterns = torch.stack(
        [
            shared_frame_mask(*shape, mixture.schedule, generator, device),
            prefix_frames_mask(*shape, mixture.schedule, generator, device),
            box_mask(*shape, generator, device),
        ]
    )
    weights = torch.tensor(
        [mixture.shared, mixture.prefix, mixture.box], dtype=torch.float, device=patterns.device
    )
    choice = torch.multinomial(weights, batch_size, replacement=True, generator=generator)
    return patterns[choice, torch.arange(batch_size, device=patterns.device)]


def apply_mask(tokens: Tensor, mask: Tensor, mask_id: int) -> Tensor:
    """tokens int64 (B, N, h, w) with [MASK] (= mask_id) where mask (bool, same shape) is True."""
    if mask.dtype != torch.bool or mask.shape != tokens.shape:
        raise ValueError(
            f"mask must be bool with the tokens' shape {tuple(tokens.shape)}, "
            f"got {mask.dtype} {tuple(mask.shape)}"
        )
    return tokens.masked_fill(mask, mask_id)
