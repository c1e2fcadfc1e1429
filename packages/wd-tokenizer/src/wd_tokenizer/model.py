"""VQGAN tokenizer: `VQGANConfig`, the `VQGAN` module with its frame/video API, and the named presets.

Pixel convention: every public method takes and returns pixels in [0, 1] (float (B, 3, H, W)) or uint8
(N, H, W, 3) videos. `VQGAN.to_model_range` / `from_model_range` are the one place where pixels are mapped
to what the network sees: [-1, 1] when `config.pixel_range == "signed"` (our trained presets, as taming),
unchanged for "unit" (open-muse and aMUSEd checkpoints take [0, 1] directly).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from einops import rearrange
from safetensors import safe_open
from torch import nn

from wd_tokenizer.fieldtypes import check_field_types
from wd_tokenizer.io import atomic_write_text, checkpoint_dir, read_json, read_tensors, save_module_weights
from wd_tokenizer.modules import Decoder, Encoder, PatchEncoder
from wd_tokenizer.quantizers import build_quantizer


MAX_CODEBOOK = 2**20  # FSQ keeps its whole implicit codebook in memory; the paper's has 8192 codes


@dataclass
class VQGANConfig:
    """Architecture and quantizer of a VQGAN; field names follow open-muse's config where they overlap."""

    hidden_channels: int = 128
    channel_mult: list[int] = field(default_factory=lambda: [1, 2, 2, 4, 6])
    num_res_blocks: int = 2
    resolution: int = 256  # nominal input size; only used to place `attn_resolutions`
    attn_resolutions: list[int] = field(default_factory=list)
    no_attn_mid_block: bool = True
    z_channels: int = 64
    embed_dim: int = 64
    num_embeddings: int = 8192
    norm_groups: int = 32
    dropout: float = 0.0
    pixel_range: Literal["unit", "signed"] = "unit"
    quantizer: Literal["l2", "vq", "fsq", "lfq"] = "l2"
    commitment_weight: float = 0.25
    # vector-quantize-pytorch options ("vq"): a low-dimensional, cosine-similarity codebook initialised by
    # k-means, EMA-updated and with dead codes re-seeded from the batch keeps most codes in use.
    codebook_dim: int | None = None
    use_cosine_sim: bool = False
    kmeans_init: bool = False
    threshold_ema_dead_code: float = 0.0
    ema_decay: float = 0.8
    fsq_levels: list[int] | None = None  # "fsq": the codebook size is their product (num_embeddings unused)
    # "conv": the taming / open-muse encoder; "patch": each downsample_factor-sized patch encoded on its own
    # (modules.PatchEncoder), so that equal patches get equal codes whatever surrounds them.
    encoder: Literal["conv", "patch"] = "conv"

    def __post_init__(self) -> None:
        check_field_types(self)
        positive = ("hidden_channels", "resolution", "z_channels", "embed_dim", "num_embeddings", "norm_groups")
        small = {name: getattr(self, name) for name in positive if getattr(self, name) < 1}
        if small or self.num_res_blocks < 0 or min(self.channel_mult, default=0) < 1:
            raise ValueError(f"{', '.join(small) or 'num_res_blocks or channel_mult'} out of range: the sizes must "
                             f"be >= 1 (num_res_blocks >= 0, channel_mult a non-empty list), got {self}")
        widths = [self.hidden_channels * m for m in self.channel_mult]
        if any(w % self.norm_groups for w in widths):
            raise ValueError(f"every width {widths} must be a multiple of norm_groups={self.norm_groups}")
        if self.pixel_range not in ("unit", "signed"):
            raise ValueError(f"pixel_range must be 'unit' or 'signed', got {self.pixel_range!r}")
        if not 0 <= self.dropout < 1 or self.commitment_weight < 0 or not 0 <= self.ema_decay <= 1:
            raise ValueError(f"dropout must be in [0, 1), commitment_weight >= 0 and ema_decay in [0, 1], got "
                             f"{self.dropout}, {self.commitment_weight}, {self.ema_decay}")
        # vector-quantize-pytorch's FSQ takes a level of 2 only with its symmetric variant, which wd does not use.
        if self.fsq_levels is not None and min(self.fsq_levels, default=0) < 3:
            raise ValueError(f"fsq_levels must be a non-empty list of levels >= 3, got {self.fsq_levels}")
        if self.codebook_size > MAX_CODEBOOK:
            raise ValueError(f"a codebook of {self.codebook_size} codes is past MAX_CODEBOOK = {MAX_CODEBOOK}")
        if self.encoder not in ("conv", "patch"):
            raise ValueError(f"encoder must be 'conv' or 'patch', got {self.encoder!r}")

    @property
    def codebook_size(self) -> int:
        """Codes the quantizer has: prod(fsq_levels) for "fsq", else num_embeddings."""
        return math.prod(self.fsq_levels) if self.quantizer == "fsq" and self.fsq_levels else self.num_embeddings

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)


class VQGANOutput(NamedTuple):
    reconstruction: torch.Tensor  # float (B, 3, H, W) in [0, 1] scale, not clamped (losses see the raw output)
    ids: torch.Tensor  # int64 (B, h, w)
    quantizer_loss: torch.Tensor  # scalar


class VQGAN(nn.Module):
    """Frames <-> discrete tokens: float (B, 3, H, W) in [0, 1] <-> int64 (B, H/f, W/f)."""

    def __init__(self, config: VQGANConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = build_encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(config.z_channels, config.embed_dim, kernel_size=1)
        self.quantize = build_quantizer(config)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.z_channels, kernel_size=1)

    @property
    def codebook_size(self) -> int:
        return self.quantize.codebook_size

    @property
    def downsample_factor(self) -> int:
        return self.config.downsample_factor

    def to_model_range(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels * 2.0 - 1.0 if self.config.pixel_range == "signed" else pixels

    def from_model_range(self, pixels: torch.Tensor) -> torch.Tensor:
        return (pixels + 1.0) / 2.0 if self.config.pixel_range == "signed" else pixels

    def check_pixels(self, pixels: torch.Tensor) -> None:
        if pixels.ndim != 4 or pixels.shape[1] != 3 or not pixels.is_floating_point():
            raise ValueError(f"expected float pixels (B, 3, H, W), got {pixels.dtype} {tuple(pixels.shape)}")
        self.check_size(*pixels.shape[-2:])

    def check_size(self, height: int, width: int) -> None:
        f = self.downsample_factor
        if height % f or width % f:
            raise ValueError(f"height and width ({height}, {width}) must be divisible by the downsample factor {f}")

    def latents(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels (B, 3, H, W) in [0, 1] -> pre-quantization latents (B, embed_dim, h, w)."""
        self.check_pixels(pixels)
        return self.quant_conv(self.encoder(self.to_model_range(pixels)))

    def decode_latents(self, quantized: torch.Tensor) -> torch.Tensor:
        """Quantized latents (B, embed_dim, h, w) -> unclamped pixels (B, 3, H, W) in [0, 1] scale."""
        return self.from_model_range(self.decoder(self.post_quant_conv(quantized)))

    def forward(self, pixels: torch.Tensor) -> VQGANOutput:
        """Training pass: pixels (B, 3, H, W) in [0, 1] -> reconstruction, ids and quantizer loss."""
        quantized, ids, loss = self.quantize(self.latents(pixels))
        return VQGANOutput(self.decode_latents(quantized), ids, loss)

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Float (B, 3, H, W) in [0, 1] -> ids int64 (B, H/f, W/f)."""
        _, ids, _ = self.quantize(self.latents(pixels))
        return ids.long()

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Integer ids (B, h, w) in [0, codebook_size) -> pixels float (B, 3, h*f, w*f) clamped to [0, 1]."""
        check_ids(ids, "(B, h, w)")
        ids = ids.long()  # also lets uint16 ids (the on-disk token dtype) through min/max and the lookup
        if ids.numel() and (ids.min() < 0 or ids.max() >= self.codebook_size):
            raise ValueError(f"ids must lie in [0, {self.codebook_size}), got [{int(ids.min())}, {int(ids.max())}]; "
                             f"the [MASK] id {self.codebook_size} cannot be decoded")
        return self.decode_latents(self.quantize.codes(ids)).clamp(0.0, 1.0)

    @torch.no_grad()
    def encode_video(self, frames: torch.Tensor, chunk_size: int = 16) -> torch.Tensor:
        """Uint8 (N, H, W, 3) video (numpy or torch) -> ids int64 (N, H/f, W/f) on the CPU, `chunk_size` frames
        at a time (each chunk's ids go to the CPU before the next, so device memory stays bounded)."""
        frames = torch.as_tensor(frames)
        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8 frames (N, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
        check_chunk_size(chunk_size)
        self.check_size(frames.shape[1], frames.shape[2])
        device, dtype = self.device_and_dtype()
        f = self.downsample_factor
        ids = torch.empty(len(frames), frames.shape[1] // f, frames.shape[2] // f, dtype=torch.long)
        for start in range(0, len(frames), chunk_size):
            chunk = rearrange(frames[start : start + chunk_size].to(device), "n h w c -> n c h w")
            ids[start : start + chunk_size] = self.encode(chunk.to(dtype) / 255.0).cpu()
        return ids

    @torch.no_grad()
    def decode_video(self, ids: torch.Tensor, chunk_size: int = 16) -> torch.Tensor:
        """Integer ids (N, h, w), numpy or torch -> uint8 video (N, h*f, w*f, 3) on the CPU, `chunk_size` frames
        at a time (each chunk goes to the CPU before the next, so device memory stays bounded)."""
        ids = torch.as_tensor(ids)
        check_ids(ids, "(N, h, w)")
        check_chunk_size(chunk_size)
        device, _ = self.device_and_dtype()
        f = self.downsample_factor
        video = torch.empty(len(ids), ids.shape[1] * f, ids.shape[2] * f, 3, dtype=torch.uint8)
        for start in range(0, len(ids), chunk_size):
            pixels = self.decode(ids[start : start + chunk_size].to(device)).float()
            video[start : start + chunk_size] = rearrange((pixels * 255.0).round().to(torch.uint8).cpu(),
                                                          "n c h w -> n h w c")
        return video

    def device_and_dtype(self) -> tuple[torch.device, torch.dtype]:
        weight = self.encoder.conv_in.weight
        return weight.device, weight.dtype

    def save_pretrained(self, directory: str | Path) -> None:
        """Write `config.json` + `model.safetensors` (each atomically) into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(directory / "config.json", json.dumps(dataclasses.asdict(self.config), indent=2))
        save_module_weights(self, directory / "model.safetensors")

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> VQGAN:
        """Load a directory written by `save_pretrained` (strict: every tensor must match)."""
        directory = checkpoint_dir(directory)
        values = read_json(directory / "config.json")
        try:
            config = config_from_dict(values)
        except ValueError as error:
            raise ValueError(f"{directory / 'config.json'}: {error}") from None
        weights = directory / "model.safetensors"
        state = read_tensors(weights, device=device)  # first: a missing or unreadable file says so itself
        try:
            check_encoder_decoder_shapes(config, weights)
            model = cls(config)
            load_state_dict_strict(model, state)
        except ValueError as error:
            raise ValueError(f"{weights}: {error}") from None
        return model.to(device).eval()


def check_ids(ids: torch.Tensor, layout: str) -> None:
    if ids.ndim != 3 or ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(f"expected integer ids {layout}, got {ids.dtype} {tuple(ids.shape)}")


def check_chunk_size(chunk_size: int) -> None:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")


def config_from_dict(values: dict) -> VQGANConfig:
    """`VQGANConfig` from a dict, refusing keys it does not know."""
    known = {f.name for f in dataclasses.fields(VQGANConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown VQGANConfig fields: {unknown}")
    return VQGANConfig(**values)


def load_state_dict_strict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load `state` into `model`; a ValueError (one line) counts the missing, unexpected and mis-shaped keys and
    names the first few of each."""
    check_shapes({k: v.shape for k, v in model.state_dict().items()}, {k: v.shape for k, v in state.items()})
    model.load_state_dict(state, strict=True)


def check_shapes(expected: dict[str, torch.Size], found: dict[str, torch.Size]) -> None:
    """ValueError (one line) counting the missing, unexpected and mis-shaped keys of `found` against `expected`."""
    problems = {
        "missing": sorted(set(expected) - set(found)),
        "unexpected": sorted(set(found) - set(expected)),
        "wrong shape": sorted(f"{k}: {tuple(found[k])} != {tuple(expected[k])}"
                              for k in set(found) & set(expected) if tuple(found[k]) != tuple(expected[k])),
    }
    if any(problems.values()):
        listed = "; ".join(f"{len(keys)} {kind} {_first_few(keys)}" for kind, keys in problems.items() if keys)
        raise ValueError(f"checkpoint does not match the model: {listed}")


def _first_few(names: list[str], limit: int = 3) -> str:
    """`['a', 'b', 'c', ...]`: a key list short enough for one line (a wrong architecture misses hundreds)."""
    shown = ", ".join(repr(name) for name in names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}]"


def build_encoder(config: VQGANConfig) -> Encoder | PatchEncoder:
    """The encoder `config.encoder` names."""
    return Encoder(config) if config.encoder == "conv" else PatchEncoder(config)


def check_encoder_decoder_shapes(config: VQGANConfig, path: Path) -> None:
    """ValueError when the encoder and decoder that `config` describes do not have the shapes stored in the
    safetensors file `path`, found from the shapes alone (a meta-device build and the file's header): a damaged
    config must not allocate a model many times the size of its weights before the mismatch shows."""
    with torch.device("meta"):
        parts = {"encoder": build_encoder(config), "decoder": Decoder(config)}
    expected = {f"{part}.{k}": v.shape for part, module in parts.items() for k, v in module.state_dict().items()}
    with safe_open(path, framework="pt") as weights:
        found = {k: weights.get_slice(k).get_shape() for k in weights.keys() if k.startswith(("encoder.", "decoder."))}
    check_shapes(expected, found)


# FSQ for the small presets: on synthetic shapes a VectorQuantize codebook (cosine, dim 8, k-means, dead-code
# re-seeding) collapsed to a few codes within a few hundred steps while FSQ kept reconstructing (see benchmarks).
SMALL = dict(
    hidden_channels=32, num_res_blocks=1, z_channels=32, embed_dim=32, num_embeddings=1000, norm_groups=8,
    pixel_range="signed", quantizer="fsq", fsq_levels=[8, 5, 5, 5],
)

PRESETS: dict[str, VQGANConfig] = {
    # open-muse `vqgan-f16-8192-laion`, the tokenizer of aMUSEd and WorldDreamer (~146M parameters).
    "open-muse-f16-8192": VQGANConfig(
        hidden_channels=128, channel_mult=[1, 2, 2, 4, 6], num_res_blocks=2, attn_resolutions=[],
        no_attn_mid_block=True, z_channels=64, embed_dim=64, num_embeddings=8192, pixel_range="unit", quantizer="l2",
    ),
    # CPU-sized tokenizers to train from scratch (1000 FSQ codes).
    "f16-small": VQGANConfig(channel_mult=[1, 1, 2, 2, 4], **SMALL),
    "f8-small": VQGANConfig(channel_mult=[1, 2, 2, 4], **SMALL),
    # The quickstart's: 8x8 tokens per 32x32 frame keep the synthetic worlds' shapes and colours after ~1k steps.
    "f4-small": VQGANConfig(channel_mult=[1, 2, 4], **SMALL),
    # f4-small with the patch encoder: the quickstart's (equal 4x4 patches, equal codes).
    "f4-patch": VQGANConfig(channel_mult=[1, 2, 4], encoder="patch", **SMALL),
}


def get_config(name: str, **overrides: object) -> VQGANConfig:
    """A copy of preset `name` with `overrides` applied to its fields."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return dataclasses.replace(copy.deepcopy(PRESETS[name]), **overrides)
