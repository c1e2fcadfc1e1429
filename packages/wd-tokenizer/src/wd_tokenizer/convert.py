"""Load public checkpoints: open-muse VQGAN directories and diffusers `VQModel` directories (aMUSEd layout).

Both networks take pixels in [0, 1], so converted models get `pixel_range="unit"` and the exact-L2 quantizer.
`from_checkpoint` tells the two apart by config.json (its `_class_name`, else a key only one layout's config has).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import torch

from wd_tokenizer.io import checkpoint_dir, read_json, read_tensors
from wd_tokenizer.model import VQGAN, VQGANConfig, load_state_dict_strict

# config.json's `_class_name` (written by diffusers' ConfigMixin and open-muse's copy of it) -> layout.
CLASS_NAMES = {"VQGANModel": "open-muse", "VQModel": "diffusers"}
# Without a `_class_name`, a config key only that layout has.
LAYOUT_KEYS = {"quantized_embed_dim": "open-muse", "num_vq_embeddings": "diffusers"}
PIPELINE_SUBFOLDER = "vqvae"  # where a diffusers pipeline (aMUSEd) keeps its VQModel

# open-muse config fields whose non-default values change the architecture in ways this model does not build.
OPEN_MUSE_UNSUPPORTED = {
    "decoder_res_blocks": None,
    "extra_mid_res_blocks": None,
    "decoder_hidden_channels": None,
    "decoder_channel_mult": None,
    "resample_with_conv": True,
    "num_channels": 3,
}
# Values open-muse derives from `channel_mult` and may write into its config.
OPEN_MUSE_DERIVED = {"num_resolutions", "reduction_factor", "latent_size"}
OPEN_MUSE_FIELDS = {
    "hidden_channels": "hidden_channels",
    "channel_mult": "channel_mult",
    "num_res_blocks": "num_res_blocks",
    "resolution": "resolution",
    "attn_resolutions": "attn_resolutions",
    "no_attn_mid_block": "no_attn_mid_block",
    "z_channels": "z_channels",
    "quantized_embed_dim": "embed_dim",
    "num_embeddings": "num_embeddings",
    "dropout": "dropout",
    "commitment_cost": "commitment_weight",
}

# Fields every saved diffusers `VQModel` config holds and the conversion reads.
DIFFUSERS_REQUIRED = ("block_out_channels", "layers_per_block", "latent_channels", "num_vq_embeddings")


def read_weights(directory: Path, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The first of `names` present in `directory`: safetensors, or a pickle read with `weights_only=True`."""
    for name in names:
        if (directory / name).exists():
            return read_tensors(directory / name)
    raise FileNotFoundError(f"no weights in {directory}: expected one of {list(names)}")


def check_no_unsupported(values: dict, unsupported: dict, source: str) -> None:
    bad = {k: values[k] for k, default in unsupported.items() if k in values and values[k] != default}
    if bad:
        raise ValueError(f"{source} config uses options this VQGAN does not implement: {bad}")


def from_open_muse(directory: str | Path) -> VQGAN:
    """An open-muse `VQGANModel` directory (`config.json` + `pytorch_model.bin` or safetensors) -> `VQGAN`."""
    directory = checkpoint_dir(directory)
    values = read_json(directory / "config.json")
    check_no_unsupported(values, OPEN_MUSE_UNSUPPORTED, "open-muse")
    if values.get("attn_resolutions") and values.get("num_res_blocks", 2) < 2:
        # open-muse applies level attention only when a level has more than one attention block.
        raise ValueError("open-muse skips level attention when num_res_blocks < 2; such a model does not convert")
    known = OPEN_MUSE_FIELDS.keys() | OPEN_MUSE_UNSUPPORTED.keys() | OPEN_MUSE_DERIVED
    unknown = sorted(k for k in values if not k.startswith("_") and k not in known)
    if unknown:
        raise ValueError(f"unknown open-muse config fields: {unknown}")
    fields = {ours: values[theirs] for theirs, ours in OPEN_MUSE_FIELDS.items() if theirs in values}
    model = VQGAN(VQGANConfig(**fields, pixel_range="unit", quantizer="l2", norm_groups=32))
    state = read_weights(directory, ("pytorch_model.bin", "pytorch_model.safetensors", "model.safetensors",
                                     "diffusion_pytorch_model.safetensors"))
    load_state_dict_strict(model, state)
    return model.eval()


def diffusers_config(values: dict) -> VQGANConfig:
    """Our config for a diffusers `VQModel` config, refusing block types and options we do not build."""
    down, up = set(values.get("down_block_types", [])), set(values.get("up_block_types", []))
    if down != {"DownEncoderBlock2D"} or up != {"UpDecoderBlock2D"}:
        raise ValueError(f"only DownEncoderBlock2D / UpDecoderBlock2D VQModels convert, got {sorted(down | up)}")
    missing = [k for k in DIFFUSERS_REQUIRED if k not in values]
    if missing:
        raise ValueError(f"not a diffusers VQModel config: it lacks {missing}")
    check_no_unsupported(
        values, {"act_fn": "silu", "norm_type": "group", "in_channels": 3, "out_channels": 3}, "diffusers VQModel"
    )
    widths = list(values["block_out_channels"])
    hidden = widths[0]
    if any(w % hidden for w in widths):
        raise ValueError(f"block_out_channels {widths} must be multiples of the first width")
    latent_channels = values["latent_channels"]
    return VQGANConfig(
        hidden_channels=hidden,
        channel_mult=[w // hidden for w in widths],
        num_res_blocks=values["layers_per_block"],
        resolution=values.get("sample_size", 256),
        attn_resolutions=[],
        no_attn_mid_block=not values.get("mid_block_add_attention", True),
        z_channels=latent_channels,
        embed_dim=values.get("vq_embed_dim") or latent_channels,
        num_embeddings=values["num_vq_embeddings"],
        norm_groups=values.get("norm_num_groups", 32),
        pixel_range="unit",
        quantizer="l2",
    )


def diffusers_key(key: str, levels: int) -> str:
    """Rename one diffusers `VQModel` key to our (open-muse) name; up_blocks count from the lowest resolution."""
    key = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", key)
    key = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", key)
    key = re.sub(
        r"decoder\.up_blocks\.(\d+)\.(resnets|upsamplers\.0)\.",
        lambda m: f"decoder.up.{levels - 1 - int(m[1])}.{'block' if m[2] == 'resnets' else 'upsample'}.",
        key,
    )
    key = re.sub(r"mid_block\.resnets\.(\d)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", key)
    key = re.sub(r"mid_block\.attentions\.0\.", "mid.attn_1.", key)
    for theirs, ours in (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")):
        key = key.replace(f"attn_1.{theirs}.", f"attn_1.{ours}.")
    return key.replace("conv_shortcut.", "nin_shortcut.").replace("conv_norm_out.", "norm_out.")


def from_diffusers_vqmodel(directory: str | Path) -> VQGAN:
    """A diffusers `VQModel` directory (`config.json` + `diffusion_pytorch_model.safetensors`) -> `VQGAN`."""
    directory = checkpoint_dir(directory)
    config = diffusers_config(read_json(directory / "config.json"))
    state = read_weights(directory, ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"))
    levels = len(config.channel_mult)
    converted = {}
    for key, tensor in state.items():
        ours = diffusers_key(key, levels)
        # diffusers' mid-block attention projections are Linear layers; ours are 1x1 convolutions.
        is_attn_projection = ".attn_1." in ours and ours.endswith(".weight") and tensor.ndim == 2
        converted[ours] = tensor[:, :, None, None] if is_attn_projection else tensor
    model = VQGAN(config)
    load_state_dict_strict(model, converted)
    return model.eval()


CONVERTERS = {"open-muse": from_open_muse, "diffusers": from_diffusers_vqmodel}


def detect_layout(directory: str | Path) -> str:
    """"open-muse" or "diffusers" from `directory/config.json`; a one-line error for anything else (no config.json,
    another model class, a transformers model, a directory that `VQGAN.from_pretrained` reads as it is)."""
    path = checkpoint_dir(directory) / "config.json"
    values = read_json(path)
    class_name = values.get("_class_name")
    if class_name in CLASS_NAMES:
        return CLASS_NAMES[class_name]
    if class_name is not None:
        raise ValueError(f"{path}: _class_name {class_name!r} is neither open-muse's VQGANModel nor diffusers' "
                         "VQModel, the two that convert to a VQGAN")
    if "model_type" in values:
        raise ValueError(f"{path} describes a transformers {values['model_type']!r} model, not a VQGAN")
    for key, layout in LAYOUT_KEYS.items():
        if key in values:
            return layout
    if values and set(values) <= {field.name for field in dataclasses.fields(VQGANConfig)}:
        raise ValueError(f"{path.parent} is already a wd-tokenizer VQGAN directory: VQGAN.from_pretrained reads it")
    raise ValueError(f"{path} is neither an open-muse VQGANModel config nor a diffusers VQModel config")


def from_checkpoint(directory: str | Path, layout: str | None = None) -> VQGAN:
    """An open-muse or diffusers `VQModel` directory, or a diffusers pipeline (aMUSEd) holding one in `vqvae/`,
    -> `VQGAN`; the layout is detected (`detect_layout`), and a given `layout` it contradicts is an error."""
    directory = checkpoint_dir(directory)
    if not (directory / "config.json").exists() and (directory / PIPELINE_SUBFOLDER / "config.json").is_file():
        directory = directory / PIPELINE_SUBFOLDER
    if layout is not None and layout not in CONVERTERS:
        raise ValueError(f"layout must be one of {sorted(CONVERTERS)}, got {layout!r}")
    found = detect_layout(directory)
    if layout is not None and layout != found:
        raise ValueError(f"{directory} is in the {found} layout, not {layout}")
    return CONVERTERS[found](directory)
