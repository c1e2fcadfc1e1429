"""Text encoders: shapes, masks, the empty prompt, determinism, caching and save/load round trips."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wd_cli.text_encoders import (
    CachedTextEncoder,
    HashTextEncoder,
    T5TextEncoder,
    TextEncoder,
    load_text_encoder,
    pad_embeddings,
)

PROMPTS = ["a red circle moves up", "", "Blue square", "a green triangle moves left and bounces"]


def test_hash_encoder_one_token_per_word_and_empty_prompt_is_unconditional() -> None:
    encoder = HashTextEncoder(dim=16, max_length=5)
    text, mask = encoder.encode(PROMPTS)
    assert text.dtype == torch.float32 and mask.dtype == torch.bool
    assert text.shape == (4, 5, 16) and mask.shape == (4, 5)
    assert mask.sum(dim=1).tolist() == [5, 0, 2, 5]  # truncated to max_length; "" has no real token
    assert torch.all(text[~mask] == 0)
    only_empty_text, only_empty_mask = encoder.encode([""])
    assert only_empty_text.shape == (1, 1, 16) and not only_empty_mask.any()
    assert isinstance(encoder, TextEncoder)


def test_hash_encoder_is_a_stable_function_of_seed_and_words() -> None:
    text, _ = HashTextEncoder(dim=16, seed=3).encode(["Red, CIRCLE!"])
    again, _ = HashTextEncoder(dim=16, seed=3).encode(["red circle"])  # case and punctuation do not matter
    other_seed, _ = HashTextEncoder(dim=16, seed=4).encode(["red circle"])
    assert torch.equal(text, again)
    assert not torch.allclose(text, other_seed)
    # A word keeps its vector wherever it appears; only the position code differs.
    encoder = HashTextEncoder(dim=16, position_weight=0.0)
    first, _ = encoder.encode(["red circle", "circle red"])
    assert torch.equal(first[0, 0], first[1, 1]) and torch.equal(first[0, 1], first[1, 0])
    assert torch.allclose(first.norm(dim=-1), torch.ones(2, 2))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(alphabet="ab cD1,.", max_size=12), min_size=1, max_size=4))
def test_hash_encoder_mask_counts_words(prompts: list[str]) -> None:
    encoder = HashTextEncoder(dim=8, max_length=4)
    text, mask = encoder.encode(prompts)
    words = [min(len(encoder.embed(prompt)), 4) for prompt in prompts]
    assert mask.sum(dim=1).tolist() == words
    assert mask.shape[1] == max(1, *words)
    for row, count in enumerate(words):  # real tokens come first, padding is zero
        assert mask[row, :count].all() and not text[row, count:].any()


def test_pad_embeddings_right_pads_and_keeps_one_column() -> None:
    text, mask = pad_embeddings([torch.ones(2, 3), torch.zeros(0, 3)], dim=3)
    assert text.shape == (2, 2, 3) and mask.tolist() == [[True, True], [False, False]]
    empty_text, empty_mask = pad_embeddings([torch.zeros(0, 3)], dim=3)
    assert empty_text.shape == (1, 1, 3) and not empty_mask.any()


class CountingEncoder:
    """Records which prompts reach the wrapped encoder."""

    def __init__(self) -> None:
        self.inner = HashTextEncoder(dim=8)
        self.dim = 8
        self.seen: list[str] = []

    def encode(self, prompts):
        self.seen.extend(prompts)
        return self.inner.encode(prompts)

    def save_pretrained(self, directory) -> None:
        self.inner.save_pretrained(directory)


def test_cached_encoder_never_encodes_a_prompt_twice_and_matches_the_encoder() -> None:
    counting = CountingEncoder()
    cached = CachedTextEncoder(counting)
    first = cached.encode(["red", "blue square", "red"])
    second = cached.encode(["blue square", "", "red"])
    assert counting.seen == ["red", "blue square", ""]
    for got, prompts in ((first, ["red", "blue square", "red"]), (second, ["blue square", "", "red"])):
        expected = counting.inner.encode(prompts)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_cached_encoder_drops_the_least_recently_used_prompt() -> None:
    counting = CountingEncoder()
    cached = CachedTextEncoder(counting, max_prompts=2)
    cached.encode(["red", "blue"])
    cached.encode(["red"])  # red is now the most recent
    cached.encode(["green"])  # evicts blue
    assert list(cached.cache) == ["red", "green"]
    cached.encode(["red", "blue"])
    assert counting.seen == ["red", "blue", "green", "blue"]
    with pytest.raises(ValueError, match="max_prompts"):
        CachedTextEncoder(counting, max_prompts=0)


def test_hash_encoder_round_trip(tmp_path: Path) -> None:
    encoder = HashTextEncoder(dim=12, seed=7, max_length=6, position_weight=0.25)
    CachedTextEncoder(encoder).save_pretrained(tmp_path)
    loaded = load_text_encoder(tmp_path)
    assert isinstance(loaded, HashTextEncoder)
    assert (loaded.dim, loaded.seed, loaded.max_length, loaded.position_weight) == (12, 7, 6, 0.25)
    assert torch.equal(loaded.encode(PROMPTS)[0], encoder.encode(PROMPTS)[0])


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_text_encoder(tmp_path / "missing")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        load_text_encoder(tmp_path)
    (tmp_path / "config.json").write_text('{"class": "Word2Vec"}')
    with pytest.raises(ValueError, match="unknown text encoder class 'Word2Vec'"):
        load_text_encoder(tmp_path)
    (tmp_path / "config.json").write_text('{"class": ["HashTextEncoder"]}')
    with pytest.raises(ValueError, match="unknown text encoder class"):
        load_text_encoder(tmp_path)
    (tmp_path / "config.json").write_text('{"class": "HashTextEncoder", "width": 3}')
    with pytest.raises(ValueError, match="unknown text encoder fields"):
        load_text_encoder(tmp_path)
    with pytest.raises(ValueError, match="cannot load a T5 encoder"):
        T5TextEncoder.from_pretrained(tmp_path / "nothing-here")


def test_t5_encoder_shapes_masks_determinism_and_round_trip(tiny_t5_dir: Path, tmp_path: Path) -> None:
    encoder = T5TextEncoder.from_pretrained(tiny_t5_dir, max_length=4)
    assert encoder.dim == 16
    assert not any(parameter.requires_grad for parameter in encoder.model.parameters())
    assert not encoder.model.training
    text, mask = encoder.encode(["a red circle", "", "a blue square moves down"])
    # Word-level tokens plus </s>, truncated to max_length; the empty prompt has no real token.
    assert text.shape == (3, 4, 16) and text.dtype == torch.float32 and text.device.type == "cpu"
    assert mask.sum(dim=1).tolist() == [4, 0, 4]
    assert torch.all(text[~mask] == 0)
    again, _ = encoder.encode(["a red circle"])
    assert torch.equal(again[0], text[0])  # no dropout, batch-independent
    encoder.save_pretrained(tmp_path / "encoder")
    loaded = load_text_encoder(tmp_path / "encoder")
    assert isinstance(loaded, T5TextEncoder) and loaded.max_length == 4
    assert torch.equal(loaded.encode(["a red circle", "", "a blue square moves down"])[0], text)


@pytest.mark.parametrize(("fields", "message"), [
    ('"dim": "16"', "dim must be int, got '16'"),
    ('"dim": 16.0', "dim must be int, got 16.0"),
    ('"seed": true', "seed must be int, got True"),
    ('"position_weight": "0.5"', "position_weight must be float, got '0.5'"),
    ('"position_weight": NaN', "a finite position_weight"),
    ('"max_length": 1000000000', "max_length in [1, 4096]"),
    ('"dim": 100000000', "dim in [2, 65536]"),
])
def test_hash_encoder_config_types_and_sizes_are_one_line_errors(tmp_path: Path, fields: str, message: str) -> None:
    (tmp_path / "config.json").write_text(f'{{"class": "HashTextEncoder", {fields}}}')
    with pytest.raises(ValueError, match=re.escape(message)):
        load_text_encoder(tmp_path)


@pytest.mark.parametrize("damage", ["zeroed weights", "a string width", "a negative vocabulary"])
def test_a_damaged_t5_is_a_one_line_error(tiny_t5_dir: Path, tmp_path: Path, damage: str) -> None:
    copy = shutil.copytree(tiny_t5_dir, tmp_path / "t5")
    config = json.loads((copy / "config.json").read_text())
    if damage == "zeroed weights":
        (copy / "model.safetensors").write_bytes(bytes((copy / "model.safetensors").stat().st_size))
    else:
        key, value = ("d_model", "16") if damage == "a string width" else ("vocab_size", -1)
        (copy / "config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(ValueError, match=f"^cannot load a T5 encoder from {copy}: ") as raised:
        T5TextEncoder.from_pretrained(copy)
    assert "\n" not in str(raised.value)
