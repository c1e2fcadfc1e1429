"""Token caches: what is written reads back equal, ids are range-checked, and interrupted writes resume."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from wd_data.collate import collate_samples
from wd_data.token_cache import TokenCacheDataset, TokenCacheError, write_token_cache

NUM_SAMPLES, SHARD = 10, 4  # shards of 4, 4 and 2 samples


class CountingEncoder:
    """Ids = red channel * 257 on a 4x4 grid: spans the whole uint16 range; counts its calls."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls = 0
        self.fail_at = fail_at

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt("simulated interruption")
        return frames[:, ::4, ::4, 0].long() * 257


def make_samples(with_actions: bool = True) -> list[dict]:
    rng = np.random.default_rng(0)
    samples = []
    for index in range(NUM_SAMPLES):
        frames = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
        frames[0, 0, 0, 0] = 255  # the largest id, 65535, must survive
        samples.append(
            {
                "frames": torch.from_numpy(frames),
                "caption": f"clip number {index}" if index % 3 else "",
                "actions": torch.from_numpy(rng.normal(size=(3, 2)).astype(np.float32)) if with_actions else None,
                "is_image": index % 2 == 0,
                "meta": {"seed": index, "state": {"positions": rng.normal(size=(3, 2)).astype(np.float32)}},
            }
        )
    return samples


def encode_text(caption: str) -> np.ndarray:
    """(L, 4) embeddings with L = words + 1, values exact in float16."""
    return np.arange((len(caption.split()) + 1) * 4, dtype=np.float32).reshape(-1, 4) / 4


def assert_reads_back(cache: TokenCacheDataset, samples: list[dict], with_text: bool = False) -> None:
    assert len(cache) == len(samples)
    for index, original in enumerate(samples):
        sample = cache[index]
        assert sample["tokens"].dtype == torch.int64
        assert torch.equal(sample["tokens"], original["frames"][:, ::4, ::4, 0].long() * 257)
        assert sample["caption"] == original["caption"] and sample["is_image"] == original["is_image"]
        if original["actions"] is None:
            assert sample["actions"] is None
        else:
            assert torch.equal(sample["actions"], original["actions"])
        assert sample["meta"]["seed"] == original["meta"]["seed"]
        np.testing.assert_array_equal(sample["meta"]["state"]["positions"], original["meta"]["state"]["positions"])
        assert sample["meta"]["state"]["positions"].dtype == np.float32
        if with_text:
            assert torch.equal(sample["text"], torch.from_numpy(encode_text(original["caption"])))


def test_written_cache_reads_back_equal_across_shards(tmp_path):
    samples = make_samples()
    write_token_cache(samples, CountingEncoder(), tmp_path, samples_per_shard=SHARD, encode_text=encode_text,
                      metadata={"tokenizer": "test", "codebook_size": 65535}, progress=False)
    cache = TokenCacheDataset(tmp_path)
    assert_reads_back(cache, samples, with_text=True)
    assert cache.metadata == {"tokenizer": "test", "codebook_size": 65535}
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == ["manifest.json", "shard-00000", "shard-00001", "shard-00002"]
    assert torch.equal(cache[-1]["tokens"], cache[NUM_SAMPLES - 1]["tokens"])
    with pytest.raises(IndexError):
        cache[NUM_SAMPLES]


def test_samples_without_actions_read_back_without_actions(tmp_path):
    samples = make_samples(with_actions=False)
    write_token_cache(samples, CountingEncoder(), tmp_path, samples_per_shard=SHARD, progress=False)
    assert_reads_back(TokenCacheDataset(tmp_path), samples)


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        (torch.full((3, 4, 4), 65536), "uint16"),
        (torch.full((3, 4, 4), -1), "uint16"),
        (torch.zeros((3, 4, 4)), "integer ids"),
        (torch.zeros((3, 16)), "integer ids"),
    ],
)
def test_ids_that_do_not_fit_uint16_are_refused(tmp_path, ids, message):
    with pytest.raises(ValueError, match=message):
        write_token_cache(make_samples(), lambda frames: ids, tmp_path, samples_per_shard=SHARD, progress=False)
    with pytest.raises(TokenCacheError, match="incomplete"):
        TokenCacheDataset(tmp_path)


def test_rewriting_a_complete_cache_encodes_nothing(tmp_path):
    samples = make_samples()
    write_token_cache(samples, CountingEncoder(), tmp_path, samples_per_shard=SHARD, progress=False)
    again = CountingEncoder()
    write_token_cache(samples, again, tmp_path, samples_per_shard=SHARD, progress=False)
    assert again.calls == 0
    assert_reads_back(TokenCacheDataset(tmp_path), samples)


def test_interrupted_write_leaves_only_complete_shards_and_resumes(tmp_path):
    samples = make_samples()
    interrupted = CountingEncoder(fail_at=6)  # inside the second shard
    with pytest.raises(KeyboardInterrupt):
        write_token_cache(samples, interrupted, tmp_path, samples_per_shard=SHARD, progress=False)
    with pytest.raises(TokenCacheError, match="incomplete"):
        TokenCacheDataset(tmp_path)
    partial = TokenCacheDataset(tmp_path, allow_incomplete=True)
    assert_reads_back(partial, samples[:SHARD])
    assert sorted(path.name for path in tmp_path.iterdir()) == ["manifest.json", "shard-00000"]

    resumed = CountingEncoder()
    write_token_cache(samples, resumed, tmp_path, samples_per_shard=SHARD, progress=False)
    assert resumed.calls == NUM_SAMPLES - SHARD
    assert_reads_back(TokenCacheDataset(tmp_path), samples)


def test_shard_renamed_but_not_yet_listed_is_rewritten(tmp_path):
    """A crash between renaming a shard and listing it in the manifest, or a kill mid-write."""
    samples = make_samples()
    write_token_cache(samples, CountingEncoder(), tmp_path, samples_per_shard=SHARD, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["completed"] = [0]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with open(tmp_path / "shard-00001" / "tokens.npy", "r+b") as handle:
        handle.truncate(100)
    (tmp_path / "shard-00002.partial").mkdir()
    assert len(TokenCacheDataset(tmp_path, allow_incomplete=True)) == SHARD

    resumed = CountingEncoder()
    write_token_cache(samples, resumed, tmp_path, samples_per_shard=SHARD, progress=False)
    assert resumed.calls == NUM_SAMPLES - SHARD
    assert not (tmp_path / "shard-00002.partial").exists()
    assert_reads_back(TokenCacheDataset(tmp_path), samples)


def test_resuming_with_other_settings_is_refused(tmp_path):
    samples = make_samples()
    write_token_cache(samples, CountingEncoder(), tmp_path, samples_per_shard=SHARD, progress=False)
    with pytest.raises(ValueError, match="new directory"):
        write_token_cache(samples, CountingEncoder(), tmp_path, samples_per_shard=SHARD + 1, progress=False)
    with pytest.raises(ValueError, match="new directory"):
        write_token_cache(samples, CountingEncoder(), tmp_path, samples_per_shard=SHARD, metadata={"a": 1},
                          progress=False)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda sample: sample.update(frames=sample["frames"][:2]), "sample 6: token_shape"),
        (lambda sample: sample.update(actions=None), "sample 6: action_shape"),
    ],
)
def test_samples_that_differ_from_the_first_are_refused(tmp_path, change, message):
    samples = make_samples()
    change(samples[6])
    with pytest.raises(ValueError, match=message):
        write_token_cache(samples, CountingEncoder(), tmp_path, samples_per_shard=SHARD, progress=False)
    assert len(TokenCacheDataset(tmp_path, allow_incomplete=True)) == SHARD


def test_resuming_without_the_text_encoder_is_refused(tmp_path):
    samples = make_samples()
    with pytest.raises(KeyboardInterrupt):
        write_token_cache(samples, CountingEncoder(fail_at=6), tmp_path, samples_per_shard=SHARD,
                          encode_text=encode_text, progress=False)
    with pytest.raises(ValueError, match="sample 4: text_dim None"):
        write_token_cache(samples, CountingEncoder(), tmp_path, samples_per_shard=SHARD, progress=False)


def test_missing_and_corrupt_caches_raise_token_cache_error(tmp_path):
    with pytest.raises(TokenCacheError, match="does not exist"):
        TokenCacheDataset(tmp_path / "absent")
    with pytest.raises(TokenCacheError, match="no manifest"):
        TokenCacheDataset(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(TokenCacheError, match="corrupt"):
        TokenCacheDataset(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(TokenCacheError, match="not a wd-token-cache"):
        TokenCacheDataset(tmp_path)

    cache_dir = tmp_path / "cache"
    write_token_cache(make_samples(), CountingEncoder(), cache_dir, samples_per_shard=SHARD, progress=False)
    os.remove(cache_dir / "shard-00001" / "samples.json")
    cache = TokenCacheDataset(cache_dir)
    cache[0]
    with pytest.raises(TokenCacheError, match="corrupt token cache shard"):
        cache[SHARD]
    np.save(cache_dir / "shard-00002" / "tokens.npy", np.zeros((2, 3, 4, 4), np.int32))
    with pytest.raises(TokenCacheError, match="tokens is int32"):
        cache[2 * SHARD]


def test_parallel_writer_and_loader_workers_see_the_same_data(tmp_path):
    samples = make_samples()
    write_token_cache(samples, CountingEncoder(), tmp_path, samples_per_shard=SHARD, num_workers=2, progress=False)
    cache = TokenCacheDataset(tmp_path)
    assert_reads_back(cache, samples)
    batches = list(DataLoader(cache, batch_size=3, num_workers=2, collate_fn=collate_samples))
    tokens = torch.cat([batch["tokens"] for batch in batches])
    assert torch.equal(tokens, torch.stack([sample["frames"][:, ::4, ::4, 0].long() * 257 for sample in samples]))
    assert [caption for batch in batches for caption in batch["caption"]] == [s["caption"] for s in samples]


def test_iterable_datasets_are_refused_with_a_clear_error(tmp_path):
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(make_samples())

    with pytest.raises(ValueError, match="map-style dataset"):
        write_token_cache(Stream(), CountingEncoder(), tmp_path, progress=False)


def test_editing_a_samples_meta_does_not_change_the_cache(tmp_path):
    write_token_cache(make_samples(), CountingEncoder(), tmp_path, samples_per_shard=SHARD, progress=False)
    cache = TokenCacheDataset(tmp_path)
    cache[1]["meta"]["seed"] = -1
    assert cache[1]["meta"]["seed"] == 1
