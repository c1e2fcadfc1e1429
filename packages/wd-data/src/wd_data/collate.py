"""Batch sample dicts: stack pixels or tokens and actions, pad text embeddings, keep the image flag."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def _stack(samples: Sequence[dict[str, Any]], key: str) -> torch.Tensor:
    shapes = {tuple(sample[key].shape) for sample in samples}
    if len(shapes) > 1:
        raise ValueError(f"cannot batch '{key}' of different shapes {sorted(shapes)}; resize or crop to one size")
    return torch.stack([torch.as_tensor(sample[key]) for sample in samples])


def _pad_text(samples: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (L_i, C) embeddings to (B, L, C) and return the (B, L) mask, True = real token."""
    texts = [torch.as_tensor(sample["text"]) for sample in samples]
    widths = {text.shape[-1] for text in texts}
    if any(text.ndim != 2 for text in texts) or len(widths) > 1:
        raise ValueError(f"'text' must be (L, C) with one C across the batch, got {[tuple(t.shape) for t in texts]}")
    length = max(text.shape[0] for text in texts)
    padded = texts[0].new_zeros((len(texts), length, widths.pop()))
    mask = torch.zeros((len(texts), length), dtype=torch.bool)
    for row, (sample, text) in enumerate(zip(samples, texts, strict=True)):
        padded[row, : text.shape[0]] = text
        # A sample may carry its own mask (e.g. embeddings stored already padded); honour it.
        own_mask = sample.get("text_mask")
        mask[row, : text.shape[0]] = torch.as_tensor(own_mask, dtype=torch.bool) if own_mask is not None else True
    return padded, mask


def collate_samples(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Samples -> batch: "frames" uint8 (B, N, H, W, 3) or "tokens" int64 (B, N, h, w), "caption" list,
    "actions" (B, N, A) or None, "is_image" bool (B,), "meta" list, and "text" (B, L, C) + "text_mask" (B, L)
    when the samples carry "text" (L_i, C).
    """
    if not samples:
        raise ValueError("collate_samples needs at least one sample")
    batch: dict[str, Any] = {}
    for key in ("frames", "tokens"):
        present = [key in sample for sample in samples]
        if any(present) and not all(present):
            raise ValueError(f"some samples have '{key}' and some do not; batch them separately")
        if all(present):
            batch[key] = _stack(samples, key)
    if not batch:
        raise ValueError("samples need 'frames' or 'tokens'")
    has_actions = [sample.get("actions") is not None for sample in samples]
    if any(has_actions) and not all(has_actions):
        raise ValueError("some samples have actions and some do not; batch them separately")
    batch["actions"] = _stack(samples, "actions") if all(has_actions) else None
    has_text = [sample.get("text") is not None for sample in samples]
    if any(has_text) and not all(has_text):
        raise ValueError("some samples have 'text' embeddings and some do not; batch them separately")
    if all(has_text):
        batch["text"], batch["text_mask"] = _pad_text(samples)
    batch["caption"] = [sample.get("caption", "") for sample in samples]
    batch["is_image"] = torch.tensor([bool(sample.get("is_image", False)) for sample in samples], dtype=torch.bool)
    batch["meta"] = [sample.get("meta", {}) for sample in samples]
    return batch
