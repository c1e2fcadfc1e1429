"""STPT: token embedding + positions, U-ViT stack of STPT blocks with long skips, logits head."""

from __future__ import annotations

import json
import os
import stat
import uuid
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.checkpoint import checkpoint

from wd_stpt.condition import PromptEmbedding, STPTCondition
from wd_stpt.config import STPTConfig
from wd_stpt.layers import STPTBlock, image_attention_mask
from wd_stpt.positions import FactorizedPositions

CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"


class STPT(nn.Module):
    """Spatial Temporal Patchwise Transformer: tokens (B, N, h, w) in [0, K] -> logits (B, N, h, w, K)."""

    def __init__(self, config: STPTConfig) -> None:
        super().__init__()
        self.config = config
        width = config.width
        self.embed = nn.Embedding(config.codebook_size + 1, width)  # last row is [MASK]
        self.positions = FactorizedPositions(width, config.position_frames, config.position_height,
                                             config.position_width)
        self.prompt = PromptEmbedding(config)
        self.blocks = nn.ModuleList(STPTBlock(config) for _ in range(config.depth))
        # U-ViT: the first depth//2 blocks push their output, the last depth//2 concat one and project.
        self.skip_projs = nn.ModuleList(nn.Linear(2 * width, width, bias=False) for _ in range(config.depth // 2))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, config.codebook_size)
        self.apply(_init_weights)

    def forward(self, tokens: torch.Tensor, cond: STPTCondition | None = None) -> torch.Tensor:
        """tokens int (B, N, h, w) in [0, codebook_size] -> logits float (B, N, h, w, codebook_size)."""
        self._check_tokens(tokens)
        batch, frames, height, width = tokens.shape
        cond = STPTCondition() if cond is None else cond
        if not isinstance(cond, STPTCondition):
            raise TypeError(f"cond must be an STPTCondition or None, got {type(cond).__name__}")
        cond.check(batch, frames, self.config.text_dim, self.config.action_dim)
        stride = self.config.patch_stride
        frame_mask = video = None
        # An all-video batch (what a collate gives by default) needs no mask and no image-mode conv path. Where the
        # flags cannot be read on the host, the general path gives the same result.
        if cond.is_image is not None and (not _values_readable(tokens) or bool(cond.is_image.any())):
            frame_mask = image_attention_mask(cond.is_image, frames, (height // stride) * (width // stride))
            video = ~cond.is_image
        prompt = self.prompt(cond, batch, frames)

        x = self.embed(tokens) + self.positions(frames, height, width)
        num_skips, skips = len(self.skip_projs), []
        for index, block in enumerate(self.blocks):
            if index >= len(self.blocks) - num_skips:
                x = self.skip_projs[len(self.blocks) - 1 - index](torch.cat([x, skips.pop()], dim=-1))
            if self.config.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, prompt, frame_mask, video, use_reentrant=False)
            else:
                x = block(x, prompt, frame_mask, video)
            if index < num_skips:
                skips.append(x)
        return self.head(self.norm(x))

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        if not isinstance(tokens, torch.Tensor):
            raise TypeError(f"tokens must be a torch.Tensor, got {type(tokens).__name__}")
        if tokens.ndim != 4:
            raise ValueError(f"tokens must be (B, N, h, w), got shape {tuple(tokens.shape)}")
        if not tokens.numel():
            raise ValueError(f"tokens must not be empty, got shape {tuple(tokens.shape)}")
        if tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tokens must be int64 (or int32), got {tokens.dtype}")
        stride = self.config.patch_stride
        if tokens.shape[2] % stride or tokens.shape[3] % stride:
            raise ValueError(f"token grid h x w = {tokens.shape[2]} x {tokens.shape[3]} is not divisible by "
                             f"patch_stride {stride}")
        if _values_readable(tokens) and bool(((tokens < 0) | (tokens > self.config.codebook_size)).any()):
            raise ValueError(f"token ids must lie in [0, {self.config.codebook_size}] (the last is [MASK])")

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write `config.json` and `model.safetensors` into `directory`, each atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().contiguous().cpu() for name, tensor in self.state_dict().items()}
        _atomic_write(directory / WEIGHTS_NAME, lambda path: save_file(state, path))
        config_text = json.dumps(self.config.to_dict(), indent=2)
        _atomic_write(directory / CONFIG_NAME, lambda path: Path(path).write_text(config_text))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> STPT:
        """Load a model written by `save_pretrained`; a missing file, bad config or weights that do not
        fit the config raise one-line errors naming the file."""
        directory = Path(directory)
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory} has no {name}; expected a directory written by save_pretrained")
        try:
            values = json.loads((directory / CONFIG_NAME).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{directory / CONFIG_NAME} is not valid JSON: {error}") from None
        try:
            config = STPTConfig.from_dict(values)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{directory / CONFIG_NAME}: {error}") from None
        with torch.device("meta"):  # skip the random init that the weights overwrite anyway
            model = cls(config)
        try:
            state = load_file(directory / WEIGHTS_NAME, device=str(device))
        except SafetensorError as error:
            raise ValueError(f"{directory / WEIGHTS_NAME} is not a readable safetensors file: {error}") from None
        _check_state(state, model.state_dict(), directory / WEIGHTS_NAME)
        model.load_state_dict(state, assign=True)
        return model


def _values_readable(tensor: torch.Tensor) -> bool:
    """False where reading values on the host cannot work or would cut the graph: meta tensors (FLOP counting),
    torch.compile's tracing and CUDA-graph capture. Value checks and value-dependent shortcuts skip those."""
    if tensor.is_meta or torch.compiler.is_compiling():
        return False
    return not (tensor.is_cuda and torch.cuda.is_current_stream_capturing())


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.trunc_normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def _check_state(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: Path) -> None:
    """Raise ValueError naming the first few missing, unexpected or mis-shaped tensors of `state`."""
    problems = [f"missing {name}" if name not in state else
                f"{name} is {tuple(state[name].shape)}, config.json needs {tuple(tensor.shape)}"
                for name, tensor in expected.items() if name not in state or state[name].shape != tensor.shape]
    problems += [f"unexpected {name}" for name in state if name not in expected]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ValueError(f"{path} does not match its config.json: {'; '.join(problems[:3])}{more}")


def _atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Call write(temp_path) on a temporary file next to `path`, then rename it into place. The file ends with the
    mode a plain write gives (the umask's; an old file's when it replaces one); a failed write is a one-line
    OSError naming `path`, not the temporary file."""
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(str(temp))
        os.chmod(temp, _plain_file_mode(path))
        os.replace(temp, path)
    except (OSError, SafetensorError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error).splitlines()[0]
        raise OSError(f"cannot write {path}: {reason}") from error
    finally:
        temp.unlink(missing_ok=True)


def _plain_file_mode(path: Path) -> int:
    """The mode `open(path, "w")` would leave: the file's own when it exists, else 0o666 less the umask (writers
    such as safetensors create their files 0600, which other users could not read)."""
    if path.exists():
        return stat.S_IMODE(path.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
