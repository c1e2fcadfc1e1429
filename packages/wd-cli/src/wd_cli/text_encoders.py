"""Text encoders: prompts -> text float32 (B, L, C_text) on the CPU + text_mask bool (B, L), True = real token.

The empty prompt "" gives an all-False mask row, which STPT reads as "no prompt" (the unconditional branch).
Each encoder's directory holds `config.json` = {"class": ..., its fields}; `load_text_encoder` reads it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import math
import os
import re
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch.nn.utils.rnn import pad_sequence
from wd_tokenizer.io import atomic_write_text, new_file_mode, read_json

CONFIG_NAME = "config.json"
MAX_DIM, MAX_LENGTH = 65_536, 4096  # sizes past any text encoder's: a damaged config must not allocate gigabytes
T5_SUBFOLDER = "t5"  # transformers' own files (config.json, model.safetensors, tokenizer) live here
_WORD = re.compile(r"[a-z0-9]+")


@runtime_checkable
class TextEncoder(Protocol):
    """What the pipeline and the trainer need from a text encoder."""

    dim: int  # C_text

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> text float32 (B, L, dim) on the CPU, text_mask bool (B, L) (True = real token); L >= 1."""
        ...

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write `directory/config.json` (+ weights, if any) so that `load_text_encoder` rebuilds it."""
        ...


def pad_embeddings(embeddings: Sequence[torch.Tensor], dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad per-prompt (L_i, dim) embeddings (L_i may be 0) -> (B, max(1, max L_i), dim) + bool mask (B, L)."""
    lengths = torch.tensor([len(embedding) for embedding in embeddings], dtype=torch.long)
    text = pad_sequence([torch.zeros(1, dim), *embeddings], batch_first=True)[1:]
    mask = torch.arange(text.shape[1])[None, :] < lengths[:, None]
    return text.float(), mask


def _write_config(directory: str | os.PathLike, values: dict) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / CONFIG_NAME, json_text(values))
    return directory


def json_text(values: dict) -> str:
    """Indented JSON, the format of every config file the pipeline writes."""
    return json.dumps(values, indent=2, sort_keys=True)


class HashTextEncoder:
    """The download-free default: one fixed pseudo-random vector per word, no weights.

    Lower-cased words ([a-z0-9]+) become one token each, in order, truncated to `max_length`: a unit
    vector drawn from a stable hash (blake2b) of (seed, word), plus `position_weight` times a sinusoidal
    position code, so that STPT's cross-attention can learn which words matter and where they stand.
    Limits: no semantics at all. Synonyms ("crimson", "red") are unrelated vectors, a word never seen in
    training carries no meaning, and nothing is known about the world before training.
    """

    def __init__(self, dim: int = 64, seed: int = 0, max_length: int = 32, position_weight: float = 0.5) -> None:
        if not (2 <= dim <= MAX_DIM and 1 <= max_length <= MAX_LENGTH and math.isfinite(position_weight)):
            raise ValueError(f"need dim in [2, {MAX_DIM}], max_length in [1, {MAX_LENGTH}] and a finite "
                             f"position_weight, got dim={dim}, max_length={max_length}, "
                             f"position_weight={position_weight}")
        self.dim, self.seed, self.max_length, self.position_weight = dim, seed, max_length, position_weight
        self._words: dict[str, torch.Tensor] = {}
        self._positions = _sinusoids(max_length, dim)

    def _word_vector(self, word: str) -> torch.Tensor:
        if word not in self._words:
            digest = hashlib.blake2b(f"{self.seed}:{word}".encode(), digest_size=8).digest()
            generator = torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))
            vector = torch.randn(self.dim, generator=generator)
            self._words[word] = vector / vector.norm()
        return self._words[word]

    def embed(self, prompt: str) -> torch.Tensor:
        """One prompt -> float32 (L, dim), L = its word count up to max_length (0 for no words)."""
        words = _WORD.findall(prompt.lower())[: self.max_length]
        if not words:
            return torch.zeros(0, self.dim)
        vectors = torch.stack([self._word_vector(word) for word in words])
        return vectors + self.position_weight * self._positions[: len(words)]

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> text float32 (B, L, dim), text_mask bool (B, L); see `TextEncoder.encode`."""
        return pad_embeddings([self.embed(prompt) for prompt in prompts], self.dim)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write `directory/config.json`; there are no weights."""
        _write_config(directory, {"class": type(self).__name__, "dim": self.dim, "seed": self.seed,
                                  "max_length": self.max_length, "position_weight": self.position_weight})

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> HashTextEncoder:
        """Rebuild the encoder that `save_pretrained` described in `directory`."""
        return cls(**_fields(directory, {"dim": int, "seed": int, "max_length": int, "position_weight": float}))


def _sinusoids(length: int, dim: int) -> torch.Tensor:
    """(length, dim) unit-norm sinusoidal position codes (Transformer style)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    codes = torch.zeros(length, dim)
    codes[:, 0::2] = torch.sin(position * frequency)
    codes[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return codes / codes.norm(dim=1, keepdim=True)


def _fields(directory: str | os.PathLike, types: dict[str, type]) -> dict:
    """The named fields of `directory/config.json` (only those present), each of its type (an int is a fine
    float, a bool is neither); one-line errors naming the file and field."""
    path = Path(directory) / CONFIG_NAME
    values = read_json(path)
    unknown = set(values) - {"class", *types}
    if unknown:
        raise ValueError(f"{path}: unknown text encoder fields {sorted(unknown)}")
    for name, value in values.items():
        allowed = (int, float) if types.get(name) is float else types.get(name, str)
        if not isinstance(value, allowed) or isinstance(value, bool):
            raise ValueError(f"{path}: {name} must be {types.get(name, str).__name__}, got {value!r}")
    return {name: values[name] for name in types if name in values}


class T5TextEncoder:
    """The paper's text encoder: a frozen transformers `T5EncoderModel` and its tokenizer.

    `last_hidden_state` of the real tokens is the embedding; empty prompts get no tokens at all.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, max_length: int = 77) -> None:
        if not 1 <= max_length <= MAX_LENGTH:
            raise ValueError(f"max_length must be in [1, {MAX_LENGTH}], got {max_length}")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.dim = int(model.config.d_model)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, max_length: int | None = None, device: str | torch.device = "cpu"
    ) -> T5TextEncoder:
        """A hub name or local path of a T5 (or a directory written by `save_pretrained`), frozen on `device`."""
        source = Path(name_or_path)
        if (source / T5_SUBFOLDER).is_dir():
            saved = _fields(source, {"max_length": int})
            max_length = max_length or saved.get("max_length")
            source = source / T5_SUBFOLDER
        model, tokenizer = _load_t5(str(source) if source.exists() else str(name_or_path))
        return cls(model.to(device), tokenizer, max_length or 77)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> text float32 (B, L, d_model), text_mask bool (B, L); see `TextEncoder.encode`."""
        batch = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        device = next(self.model.parameters()).device
        hidden = self.model(input_ids=batch["input_ids"].to(device),
                            attention_mask=batch["attention_mask"].to(device)).last_hidden_state.float().cpu()
        real = batch["attention_mask"].bool()
        embeddings = [hidden[row, real[row]] if prompt.strip() else hidden.new_zeros(0, self.dim)
                      for row, prompt in enumerate(prompts)]
        return pad_embeddings(embeddings, self.dim)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """`directory/config.json` (our marker) + `directory/t5/` (transformers' model and tokenizer files)."""
        directory = Path(directory)
        self.model.save_pretrained(directory / T5_SUBFOLDER, safe_serialization=True)
        self.tokenizer.save_pretrained(directory / T5_SUBFOLDER)
        for path in (directory / T5_SUBFOLDER).iterdir():  # safetensors creates its file 0600
            if path.is_file():
                os.chmod(path, new_file_mode())
        _write_config(directory, {"class": type(self).__name__, "max_length": self.max_length})


def _load_t5(source: str) -> tuple[torch.nn.Module, Any]:
    """transformers' `T5EncoderModel` and tokenizer from a hub name or a directory as published (a whole T5's
    weights, `spiece.model` with or without `tokenizer.json`); every refusal is one ValueError line."""
    import transformers

    directory = Path(source)
    if directory.is_dir():
        _check_t5_directory(directory)
    try:
        with _quiet_transformers():
            model, info = transformers.T5EncoderModel.from_pretrained(source, output_loading_info=True)
            tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    except Exception as error:  # transformers raises many types for damaged files (a SafetensorError, ...)
        reason = " ".join(str(error).split())
        if "ignore_mismatched_sizes" in reason:
            reason = "its weights do not have the shapes its config.json gives"
        raise ValueError(f"cannot load a T5 encoder from {source}: {reason}") from None
    missing = sorted(info["missing_keys"])
    if missing:
        raise ValueError(f"cannot load a T5 encoder from {source}: its weights lack {len(missing)} encoder tensors "
                         f"(the first: {missing[0]})")
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(f"cannot load a T5 encoder from {source}: its tokenizer has {len(tokenizer)} tokens, more "
                         f"than the model's vocab_size {model.config.vocab_size}")
    return model, tokenizer


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No load report (it lists every decoder tensor of a whole T5 as unexpected; `_load_t5` checks what matters)
    and no progress bar for the few seconds a load takes."""
    from transformers.utils import logging

    verbosity, bar = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bar:
            logging.enable_progress_bar()


def _check_t5_directory(directory: Path) -> None:
    """One-line errors for a directory that is not a T5 as published, or whose tokenizer cannot be read here."""
    config = read_json(directory / CONFIG_NAME)
    if config.get("model_type") != "t5":
        kind = config.get("model_type") or config.get("_class_name") or config.get("class") or "unknown"
        raise ValueError(f"{directory / CONFIG_NAME} describes a {kind!r} model, not a transformers T5")
    has_json, has_spiece = (directory / "tokenizer.json").is_file(), (directory / "spiece.model").is_file()
    if not (has_json or has_spiece):
        raise ValueError(f"{directory} has no tokenizer: expected tokenizer.json or spiece.model")
    # transformers reads spiece.model with sentencepiece and parses it with protobuf; missing either, it falls
    # back to tiktoken and fails with an error that names neither.
    missing = [name for name, module in (("sentencepiece", "sentencepiece"), ("protobuf", "google.protobuf"))
               if not _importable(module)]
    if not has_json and missing:
        raise ValueError(f"{directory} has spiece.model but no tokenizer.json: reading it needs "
                         f"{' and '.join(missing)} (pip install 'wd-cli[t5]')")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package (google) is missing
        return False


class CachedTextEncoder:
    """Any encoder behind a per-prompt cache: a prompt among the last `max_prompts` used never runs the encoder
    again (least recently used ones are dropped, so a dataset's captions cannot fill the memory)."""

    def __init__(self, encoder: TextEncoder, max_prompts: int = 10_000) -> None:
        if max_prompts < 1:
            raise ValueError(f"max_prompts must be >= 1, got {max_prompts}")
        self.encoder = encoder
        self.dim = encoder.dim
        self.max_prompts = max_prompts
        self.cache: OrderedDict[str, torch.Tensor] = OrderedDict()  # prompt -> its real tokens (L_i, dim)

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> text float32 (B, L, dim), text_mask bool (B, L), re-padded from the cached rows."""
        found = {prompt: self.cache[prompt] for prompt in prompts if prompt in self.cache}
        missing = list(dict.fromkeys(prompt for prompt in prompts if prompt not in found))
        if missing:
            text, mask = self.encoder.encode(missing)
            found.update((prompt, text[row, mask[row]].clone()) for row, prompt in enumerate(missing))
        for prompt, embedding in found.items():
            self.cache[prompt] = embedding
            self.cache.move_to_end(prompt)
        while len(self.cache) > self.max_prompts:
            self.cache.popitem(last=False)
        return pad_embeddings([found[prompt] for prompt in prompts], self.dim)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Save the wrapped encoder (the cache is not saved)."""
        self.encoder.save_pretrained(directory)


ENCODERS = {"HashTextEncoder": HashTextEncoder, "T5TextEncoder": T5TextEncoder}


def load_text_encoder(directory: str | os.PathLike, device: str | torch.device = "cpu") -> TextEncoder:
    """Rebuild the encoder saved in `directory` (its config.json names the class); one-line errors."""
    path = Path(directory) / CONFIG_NAME
    name = read_json(path).get("class")
    if not isinstance(name, str) or name not in ENCODERS:
        raise ValueError(f"{path}: unknown text encoder class {name!r}; expected one of {sorted(ENCODERS)}")
    if name == "T5TextEncoder":
        return T5TextEncoder.from_pretrained(directory, device=device)
    return ENCODERS[name].from_pretrained(directory)


def unwrap(encoder: TextEncoder) -> TextEncoder:
    """The encoder inside any `CachedTextEncoder` wrappers."""
    while isinstance(encoder, CachedTextEncoder):
        encoder = encoder.encoder
    return encoder
