"""Token caches: what is written reads back equal, ids are range-checked, and interrupted writes resume."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from wd_data.collate import collate_samples
from wd_data.datasets.tar_shards import TarShardConfig, TarShardDataset
from wd_data.errors import DataSourceError, MediaReadError
from wd_data.testing import image_record, write_tar
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
                      metadata={"tokenizer": "test", "codebook_size": 65536}, progress=False)
    cache = TokenCacheDataset(tmp_path)
    assert_reads_back(cache, samples, with_text=True)
    assert cache.metadata == {"tokenizer": "test", "codebook_size": 65536}
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == ["manifest.json", "shard-00000", "shard-00001", "shard-00002"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_samples"] == NUM_SAMPLES and manifest["num_skipped"] == 0
    assert [shard["count"] for shard in manifest["shards"]] == [4, 4, 2]
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


def test_unfinished_shard_folders_are_written_again(tmp_path):
    """A kill mid-write leaves `.partial` folders, or a folder whose shard.json never landed."""
    samples = make_samples()
    write_token_cache(samples, CountingEncoder(), tmp_path, samples_per_shard=SHARD, progress=False)
    os.remove(tmp_path / "shard-00001" / "shard.json")
    (tmp_path / "shard-00001" / "tokens.npy").write_bytes(b"half")
    (tmp_path / "shard-00002").rename(tmp_path / "shard-00002.partial")
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

    (tmp_path / "manifest.json").write_text(json.dumps({"format": "wd-token-cache", "version": 1}))
    with pytest.raises(TokenCacheError, match="version 1.*new directory"):
        TokenCacheDataset(tmp_path)


def garble(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(data)


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (lambda folder: os.remove(folder / "samples.json"), "samples.json"),
        (lambda folder: os.truncate(folder / "tokens.npy", 200), "tokens.npy is 200 bytes"),
        (lambda folder: garble(folder / "tokens.npy", 0, b"\x00" * 16), "corrupt token cache shard"),
        (lambda folder: garble(folder / "samples.json", 0, b"}}}}"), "corrupt token cache shard"),
        (lambda folder: garble(folder / "text_offsets.npy", 128, np.int64(99).tobytes()), "text offsets"),
        (lambda folder: np.save(folder / "actions.npy", np.zeros((4, 3, 2), np.float64)), "actions.npy is"),
    ],
)
def test_a_truncated_or_garbled_shard_is_skipped_when_the_cache_opens(tmp_path, spoil, reason, caplog):
    samples = make_samples()
    write_token_cache(samples, CountingEncoder(), tmp_path, samples_per_shard=SHARD, encode_text=encode_text,
                      progress=False)
    spoil(tmp_path / "shard-00001")
    cache = TokenCacheDataset(tmp_path)
    assert len(cache) == NUM_SAMPLES - SHARD and cache.num_skipped == SHARD
    assert reason in cache.skips.reasons[0] and "shard-00001" in caplog.text
    assert_reads_back(cache, samples[:SHARD] + samples[2 * SHARD :], with_text=True)


def test_ids_past_the_codebook_are_refused_at_open_or_skipped_when_read(tmp_path):
    samples = make_samples()
    write_token_cache(samples, lambda frames: frames[:, ::4, ::4, 0].long() % 16, tmp_path,
                      samples_per_shard=SHARD, metadata={"codebook_size": 16}, progress=False)
    info = json.loads((tmp_path / "shard-00002" / "shard.json").read_text())
    (tmp_path / "shard-00002" / "shard.json").write_text(json.dumps({**info, "max_id": 16}))
    # Garbled in place, header intact: found when the sample is read, not as an IndexError in the model.
    tokens = np.load(tmp_path / "shard-00000" / "tokens.npy")
    header = (tmp_path / "shard-00000" / "tokens.npy").stat().st_size - tokens.nbytes
    garble(tmp_path / "shard-00000" / "tokens.npy", header + tokens[0].nbytes, np.uint16(999).tobytes())
    cache = TokenCacheDataset(tmp_path)
    assert len(cache) == 2 * SHARD and "past the codebook of 16" in cache.skips.reasons[0]
    sample = cache[1]
    assert sample["meta"]["seed"] == 2 and sample["meta"]["num_skipped"] == 1
    assert "row 1: token id 999 is past the codebook of 16" in cache.skips.reasons[1]
    assert all(int(cache[index]["tokens"].max()) < 16 for index in range(len(cache)))


def test_nothing_readable_is_one_clear_error(tmp_path):
    write_token_cache(make_samples()[:2], CountingEncoder(), tmp_path, progress=False)
    os.truncate(tmp_path / "shard-00000" / "tokens.npy", 10)
    with pytest.raises(TokenCacheError, match="no readable samples; first: .*tokens.npy is 10 bytes"):
        TokenCacheDataset(tmp_path)


class Flaky(torch.utils.data.Dataset):
    """Samples of make_samples, where each index in `bad` raises MediaReadError."""

    def __init__(self, bad: set[int], count: int = NUM_SAMPLES) -> None:
        self.samples = [make_samples()[index % NUM_SAMPLES] for index in range(count)]
        self.bad = bad

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        if index in self.bad:
            raise MediaReadError(f"clip{index}.mp4: cannot decode")
        return self.samples[index]


def test_bad_samples_are_left_out_and_recorded(tmp_path):
    write_token_cache(Flaky({1, 5}), CountingEncoder(), tmp_path, samples_per_shard=SHARD, progress=False)
    cache = TokenCacheDataset(tmp_path)
    kept = [index for index in range(NUM_SAMPLES) if index not in (1, 5)]
    assert_reads_back(cache, [make_samples()[index] for index in kept])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["num_skipped"] == 2 and [shard["count"] for shard in manifest["shards"]] == [3, 3, 2]
    assert manifest["skip_reasons"] == ["sample 1: clip1.mp4: cannot decode", "sample 5: clip5.mp4: cannot decode"]


def test_a_skip_rate_past_the_limit_stops_the_writer(tmp_path):
    limit = r"of 10\d samples skipped \(2\d%\), more than the limit of 20%; first: sample 0"
    with pytest.raises(DataSourceError, match=limit):
        write_token_cache(Flaky(set(range(0, 200, 4)), count=200), CountingEncoder(), tmp_path,
                          samples_per_shard=SHARD, max_skip_rate=0.2, progress=False)
    write_token_cache(Flaky(set(range(5, 200, 10)), count=200), CountingEncoder(), tmp_path / "ok",
                      samples_per_shard=SHARD, max_skip_rate=0.2, progress=False)
    assert len(TokenCacheDataset(tmp_path / "ok")) == 180


def test_writers_of_two_ranks_make_the_cache_of_one(tmp_path):
    samples = make_samples()
    write_token_cache(samples, CountingEncoder(), tmp_path / "one", samples_per_shard=SHARD, progress=False)
    write_token_cache(samples, CountingEncoder(), tmp_path / "two", samples_per_shard=SHARD, rank=1, world_size=2,
                      progress=False)
    with pytest.raises(TokenCacheError, match="incomplete"):
        TokenCacheDataset(tmp_path / "two")  # rank 0's units are missing
    write_token_cache(samples, CountingEncoder(), tmp_path / "two", samples_per_shard=SHARD, rank=0, world_size=2,
                      progress=False)
    assert_reads_back(TokenCacheDataset(tmp_path / "two"), samples)
    assert (tmp_path / "one" / "manifest.json").read_text() == (tmp_path / "two" / "manifest.json").read_text()


def test_num_samples_caches_the_first_samples(tmp_path):
    write_token_cache(make_samples(), CountingEncoder(), tmp_path, num_samples=5, samples_per_shard=SHARD,
                      progress=False)
    assert_reads_back(TokenCacheDataset(tmp_path), make_samples()[:5])


def test_tar_shards_are_cached_one_unit_per_shard_and_resume(tmp_path):
    for shard in range(3):
        kinds = ["good", "corrupt_image" if shard == 1 else "good", "good"]
        write_tar(tmp_path / f"{shard}.tar", [member for item, kind in enumerate(kinds)
                                                for member in image_record(f"{shard}{item}", 20 * (3 * shard + item),
                                                                           kind)])
    dataset = TarShardDataset(TarShardConfig(tmp_path, num_frames=1, size=8))
    encode = CountingEncoder(fail_at=4)
    with pytest.raises(KeyboardInterrupt):
        write_token_cache(dataset, encode, tmp_path / "cache", progress=False)
    assert len(TokenCacheDataset(tmp_path / "cache", allow_incomplete=True)) == 3
    resumed = CountingEncoder()
    write_token_cache(dataset, resumed, tmp_path / "cache", progress=False)
    assert resumed.calls == 2 + 3
    cache = TokenCacheDataset(tmp_path / "cache")
    assert [cache[index]["caption"] for index in range(len(cache))] == [
        f"caption {20 * n}" for n in (0, 1, 2, 3, 5, 6, 7, 8)]
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["num_skipped"] == 1 and "1.tar:11: " in manifest["skip_reasons"][0]


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

    with pytest.raises(ValueError, match="map-style dataset or a TarShardDataset"):
        write_token_cache(Stream(), CountingEncoder(), tmp_path, progress=False)


def test_editing_a_samples_meta_does_not_change_the_cache(tmp_path):
    write_token_cache(make_samples(), CountingEncoder(), tmp_path, samples_per_shard=SHARD, progress=False)
    cache = TokenCacheDataset(tmp_path)
    cache[1]["meta"]["seed"] = -1
    assert cache[1]["meta"]["seed"] == 1
