"""STPT hyper-parameters and the registry of named sizes."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

CONV_KINDS = ("depthwise", "factorized", "full", "none")
ATTENTION_BACKENDS = ("sdpa", "xformers", "math")


@dataclass(frozen=True)
class STPTConfig:
    """Every STPT hyper-parameter; `codebook_size` is also the [MASK] id."""

    codebook_size: int = 8192
    width: int = 512
    depth: int = 8
    num_heads: int = 8
    mlp_ratio: float = 4.0
    patch_stride: int = 2
    # 3D convolution before each block's attention: see conv.py and the package README.
    conv: str = "depthwise"
    text_dim: int = 768
    action_dim: int = 2
    # Typical magnitude of each action dimension (e.g. (0.05, 10.0) for a yaw change in rad and a speed in
    # m/s): actions are divided by it before the action MLP, so every dimension reaches it at a similar
    # scale. Empty: actions are used as given.
    action_scale: tuple[float, ...] = ()
    # Sizes of the learned per-axis position tables; other sizes interpolate them.
    position_frames: int = 16
    position_height: int = 16
    position_width: int = 16
    attention_backend: str = "sdpa"
    activation_checkpointing: bool = False

    def __post_init__(self) -> None:
        positive = ("codebook_size", "width", "depth", "num_heads", "patch_stride", "text_dim", "action_dim",
                    "position_frames", "position_height", "position_width")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        if not _is_number_list(self.action_scale):
            raise ValueError(f"action_scale must be a sequence of numbers, got {self.action_scale!r}")
        object.__setattr__(self, "action_scale", tuple(float(value) for value in self.action_scale))
        finite = all(math.isfinite(value) for value in self.action_scale)
        if self.action_scale and (len(self.action_scale) != self.action_dim or min(self.action_scale) <= 0
                                  or not finite):
            raise ValueError(f"action_scale must be empty or {self.action_dim} finite positive numbers (one per "
                             f"action dimension), got {self.action_scale}")
        if not (math.isfinite(self.mlp_ratio) and self.mlp_ratio > 0):
            raise ValueError(f"mlp_ratio must be a finite number > 0, got {self.mlp_ratio}")
        if self.conv not in CONV_KINDS:
            raise ValueError(f"conv must be one of {CONV_KINDS}, got {self.conv!r}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend must be one of {ATTENTION_BACKENDS}, got {self.attention_backend!r}")

    @property
    def mask_id(self) -> int:
        """The [MASK] token id (one past the last real code)."""
        return self.codebook_size

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (what config.json holds)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> STPTConfig:
        """Inverse of `to_dict`; unknown keys (ValueError) and values of the wrong type (TypeError) are
        errors, not silently kept."""
        if not isinstance(values, dict):
            raise TypeError(f"an STPT config must be a dict of fields, got {type(values).__name__}")
        _check_known(values)
        _check_types(values)
        return cls(**values)


def _is_number_list(value: Any) -> bool:
    """A list or tuple of ints/floats (not bools; a string is not a list of numbers)."""
    return isinstance(value, (list, tuple)) and all(
        isinstance(item, (int, float)) and not isinstance(item, bool) for item in value
    )


def _check_types(values: dict[str, Any]) -> None:
    """Raise TypeError naming the first value that is not of its field's type."""
    fields = {field.name: field for field in dataclasses.fields(STPTConfig)}
    for name, value in values.items():
        expected = type(fields[name].default)
        if expected is tuple:  # action_scale: JSON has lists
            if not _is_number_list(value):
                raise TypeError(f"STPTConfig field {name} must be a list of numbers, got {value!r}")
            continue
        # bool is an int subclass (reject it for int fields); a JSON integer is a fine float.
        allowed = (int, float) if expected is float else (expected,)
        if not isinstance(value, allowed) or (isinstance(value, bool) and expected is not bool):
            raise TypeError(f"STPTConfig field {name} must be {expected.__name__}, got {value!r}")


def _check_known(values: dict[str, Any]) -> None:
    """Raise ValueError naming every key of `values` that is not an STPTConfig field."""
    unknown = set(values) - {field.name for field in dataclasses.fields(STPTConfig)}
    if unknown:
        raise ValueError(f"unknown STPTConfig fields: {sorted(map(str, unknown))}")


PRESETS: dict[str, STPTConfig] = {
    # Unit tests and the CPU quickstart.
    "tiny": STPTConfig(width=64, depth=2, num_heads=4),
    "small": STPTConfig(width=256, depth=6, num_heads=4),
    # The dev-guide benchmark shape.
    "base": STPTConfig(width=512, depth=8, num_heads=8),
    # ~1.0B parameters (see README for why these dimensions); T5-XXL text embeddings are 4096 wide.
    "paper-1b": STPTConfig(width=1536, depth=24, num_heads=12, text_dim=4096),
}


def get_config(name: str, **overrides: Any) -> STPTConfig:
    """The preset `name` with `overrides` applied to its fields."""
    if name not in PRESETS:
        raise ValueError(f"unknown STPT preset {name!r}; choose one of {sorted(PRESETS)}")
    _check_known(overrides)
    _check_types(overrides)
    return dataclasses.replace(PRESETS[name], **overrides)
