"""The conditioning container (text, actions, image flag, prompt dropout) and its embedding."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from wd_stpt.config import STPTConfig
from wd_stpt.layers import Prompt


@dataclass
class STPTCondition:
    """Everything besides tokens that STPT reads; every field is optional.

    text (B, L, C_text) float, text_mask (B, L) bool (True = real token), actions (B, N, A) float,
    is_image (B,) bool (frames are independent images), drop_prompt (B,) bool (use the null prompt).
    """

    text: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    actions: torch.Tensor | None = None
    is_image: torch.Tensor | None = None
    drop_prompt: torch.Tensor | None = None

    @property
    def batch_size(self) -> int | None:
        """Batch size of the first tensor present, None when every field is None."""
        present = [value for value in self._tensors().values() if value is not None]
        return present[0].shape[0] if present else None

    def unconditional(self) -> STPTCondition:
        """The same condition with every prompt dropped: same shapes, so it batches with `self`."""
        batch = self.batch_size
        if batch is None:
            return STPTCondition()
        device = next(value.device for value in self._tensors().values() if value is not None)
        return dataclasses.replace(self, drop_prompt=torch.ones(batch, dtype=torch.bool, device=device))

    def concat(self, other: STPTCondition) -> STPTCondition:
        """Both conditions stacked along the batch (None + None stays None; a flag missing on one side means
        False)."""
        mine, theirs = self._filled(), other._filled()
        if (mine.text is None) != (theirs.text is None) or (mine.actions is None) != (theirs.actions is None):
            raise ValueError("cannot concat a condition with text/actions to one without")
        if mine.text is not None and mine.text.shape[1] != theirs.text.shape[1]:
            mine, theirs = _pad_text(mine, theirs.text.shape[1]), _pad_text(theirs, mine.text.shape[1])
        values = {}
        for name, value in mine._tensors().items():
            other_value = getattr(theirs, name)
            values[name] = None if value is None and other_value is None else torch.cat([value, other_value])
        # Two all-video conditions keep no image flags: a flag tensor, even all False, sends compiled and
        # CUDA-graph-captured forwards down the image-capable path (they cannot read the flags on the host).
        if self.is_image is None and other.is_image is None:
            values["is_image"] = None
        return STPTCondition(**values)

    def check(self, batch: int, frames: int, text_dim: int, action_dim: int) -> None:
        """Raise ValueError unless every field matches a (batch, frames) token grid and the model's dims
        (TypeError for a field that is not a tensor)."""
        for name, value in self._tensors().items():
            if value is not None and not isinstance(value, torch.Tensor):
                raise TypeError(f"STPTCondition.{name} must be a torch.Tensor or None, got {type(value).__name__}")
        for name in ("text", "actions"):
            value = getattr(self, name)
            if value is not None and not value.is_floating_point():
                raise ValueError(f"{name} must be a float tensor, got {value.dtype}")
        if self.text is not None:
            if self.text.ndim != 3 or self.text.shape[0] != batch or self.text.shape[2] != text_dim:
                raise ValueError(f"text must be (B={batch}, L, {text_dim}), got {tuple(self.text.shape)}")
            if self.text_mask is not None and (
                self.text_mask.shape != self.text.shape[:2] or self.text_mask.dtype != torch.bool
            ):
                raise ValueError(f"text_mask must be bool {tuple(self.text.shape[:2])}, got "
                                 f"{self.text_mask.dtype} {tuple(self.text_mask.shape)}")
        elif self.text_mask is not None:
            raise ValueError("text_mask given without text")
        if self.actions is not None and self.actions.shape != (batch, frames, action_dim):
            raise ValueError(f"actions must be (B={batch}, N={frames}, {action_dim}), got {tuple(self.actions.shape)}")
        for name in ("is_image", "drop_prompt"):
            value = getattr(self, name)
            if value is not None and (value.shape != (batch,) or value.dtype != torch.bool):
                raise ValueError(f"{name} must be bool ({batch},), got {value.dtype} {tuple(value.shape)}")

    def _tensors(self) -> dict[str, torch.Tensor | None]:
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

    def _filled(self) -> STPTCondition:
        """Missing flags and text masks made explicit, so two conditions concat field by field."""
        batch = self.batch_size
        if batch is None:
            return self
        device = next(value.device for value in self._tensors().values() if value is not None)
        false = torch.zeros(batch, dtype=torch.bool, device=device)
        text_mask = self.text_mask
        if self.text is not None and text_mask is None:
            text_mask = torch.ones(self.text.shape[:2], dtype=torch.bool, device=device)
        return dataclasses.replace(
            self,
            text_mask=text_mask,
            is_image=false if self.is_image is None else self.is_image,
            drop_prompt=false if self.drop_prompt is None else self.drop_prompt,
        )


def _pad_text(cond: STPTCondition, length: int) -> STPTCondition:
    """Right-pad text (and its mask with False) to at least `length` tokens."""
    extra = max(0, length - cond.text.shape[1])
    return dataclasses.replace(
        cond, text=F.pad(cond.text, (0, 0, 0, extra)), text_mask=F.pad(cond.text_mask, (0, extra), value=False)
    )


class PromptEmbedding(nn.Module):
    """Text projected to model width (shared by frames), one action token per frame, a learned null prompt.

    The null token is a key only for samples with no other valid key (prompt dropped, empty text, or no
    text/actions at all), so those samples attend to it alone and ignore every prompt value.
    """

    def __init__(self, config: STPTConfig) -> None:
        super().__init__()
        width = config.width
        self.null = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.text_proj = nn.Linear(config.text_dim, width)
        self.action_mlp = nn.Sequential(nn.Linear(config.action_dim, width), nn.GELU(), nn.Linear(width, width))
        self.action_scale = config.action_scale
        self.norm = nn.LayerNorm(width)

    def forward(self, cond: STPTCondition, batch: int, frames: int) -> Prompt:
        """-> Prompt for a (batch, frames) grid; `cond` must already be checked."""
        device, dtype = self.null.device, self.null.dtype
        keep = torch.ones(batch, dtype=torch.bool, device=device)
        if cond.drop_prompt is not None:
            keep = ~cond.drop_prompt
        # Masked-out prompt values are zeroed before projection: a zero attention weight times an inf
        # or NaN value is still NaN, and huge values overflow the LayerNorm, so only zeros are inert.
        shared, masks = [self.null.expand(batch, 1, -1)], []
        if cond.text is not None:
            text_mask = keep[:, None] if cond.text_mask is None else cond.text_mask & keep[:, None]
            shared.append(self.text_proj(torch.where(text_mask[..., None], cond.text.to(dtype), 0.0)))
            masks.append(text_mask.expand(batch, cond.text.shape[1])[:, None].expand(batch, frames, -1))
        per_frame = None
        if cond.actions is not None:
            actions = cond.actions.to(dtype)
            if self.action_scale:
                # Column by column with Python scalars: a tensor made from the tuple would be a host-to-device copy,
                # which CUDA-graph capture forbids.
                actions = torch.stack([actions[..., i] / scale for i, scale in enumerate(self.action_scale)], dim=-1)
            actions = torch.where(keep[:, None, None], actions, 0.0)
            per_frame = self.norm(self.action_mlp(actions))[:, :, None]
            masks.append(keep[:, None, None].expand(batch, frames, 1))
        valid = torch.cat(masks, dim=2) if masks else torch.zeros(batch, frames, 0, dtype=torch.bool, device=device)
        null_valid = ~valid.any(dim=2, keepdim=True)
        return Prompt(self.norm(torch.cat(shared, dim=1)), per_frame, torch.cat([null_valid, valid], dim=2))
