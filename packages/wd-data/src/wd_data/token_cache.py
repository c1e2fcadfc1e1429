"""Pre-tokenized datasets on disk, written once in shards and read back memory-mapped.

A cache directory holds `manifest.json` and one folder per shard of consecutive samples:
    shard-00000/tokens.npy        uint16 (S, N, h, w) token ids
    shard-00000/samples.json      caption, is_image and meta of each sample
    shard-00000/actions.npy       float32 (S, N, A), when the samples carry actions
    shard-00000/text.npy          float16 (L_0 + ... + L_{S-1}, C) and text_offsets.npy int64 (S + 1,),
                                  when the writer was given a text encoder
A shard is written into `shard-XXXXX.partial/`, renamed when complete, and only then listed in the
manifest (itself replaced atomically), so an interrupted write never leaves a shard that reads as
complete, and writing again into the same directory skips the listed shards and finishes the rest.
"""

from __future__ import annotations

import bisect
import copy
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset
from tqdm.auto import tqdm

from wd_data._atomic import atomic_path, fsync_file

FORMAT = "wd-token-cache"
VERSION = 1
MANIFEST = "manifest.json"
MAX_TOKEN_ID = np.iinfo(np.uint16).max
_MANIFEST_KEYS = {"num_samples", "samples_per_shard", "metadata", "schema", "completed"}

# frames uint8 (N, H, W, 3) torch or numpy -> token ids int (N, h, w) torch or numpy, e.g. a tokenizer's encode_video.
VideoEncoder = Callable[[Any], Any]
# caption -> float embeddings (L, C) torch or numpy, e.g. a text encoder's last hidden states.
TextEncoder = Callable[[str], Any]


class TokenCacheError(RuntimeError):
    """A token cache directory is missing, incomplete, corrupt or of another format."""


def _to_numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _json_default(value: Any) -> Any:
    """Let meta hold arrays, tensors, numpy scalars and paths; arrays come back as arrays (see _json_hook)."""
    if isinstance(value, np.ndarray | torch.Tensor):
        array = _to_numpy(value)
        return {"__ndarray__": array.tolist(), "dtype": array.dtype.str, "shape": list(array.shape)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store a {type(value).__name__} in a token cache's meta")


def _json_hook(value: dict[str, Any]) -> Any:
    if "__ndarray__" in value:
        return np.array(value["__ndarray__"], dtype=value["dtype"]).reshape(value["shape"])
    return value


def _shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array)


def _identity(sample: dict[str, Any]) -> dict[str, Any]:
    return sample


def _read_manifest(cache_dir: Path) -> dict[str, Any]:
    path = cache_dir / MANIFEST
    if not cache_dir.is_dir():
        raise TokenCacheError(f"no token cache at {cache_dir}: the directory does not exist")
    if not path.is_file():
        raise TokenCacheError(f"{cache_dir} is not a token cache: it has no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise TokenCacheError(f"corrupt token cache manifest {path}: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise TokenCacheError(f"{path} is not a {FORMAT} version {VERSION} manifest")
    missing = sorted(_MANIFEST_KEYS - manifest.keys())
    if missing:
        raise TokenCacheError(f"corrupt token cache manifest {path}: missing {missing}")
    return manifest


def _write_manifest(cache_dir: Path, manifest: dict[str, Any]) -> None:
    with atomic_path(cache_dir / MANIFEST) as temporary:
        Path(temporary).write_text(json.dumps(manifest, indent=1, sort_keys=True))


class _ShardWriter:
    """Collects the encoded samples of one shard, checking that each has the cache's schema (the first
    sample's token shape, action shape or None, text width or None)."""

    def __init__(self, manifest: dict[str, Any]) -> None:
        self.manifest = manifest
        self.tokens: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.texts: list[np.ndarray] = []
        self.records: list[dict[str, Any]] = []

    def add(self, index: int, sample: dict[str, Any], ids: Any, text: Any | None) -> None:
        ids = _to_numpy(ids)
        if ids.ndim != 3 or not np.issubdtype(ids.dtype, np.integer):
            found = f"{ids.dtype} {ids.shape}"
            raise ValueError(f"sample {index}: encode_video must return integer ids (N, h, w), got {found}")
        if ids.size and (ids.min() < 0 or ids.max() > MAX_TOKEN_ID):
            low, high = ids.min(), ids.max()
            raise ValueError(f"sample {index}: token ids must be in [0, {MAX_TOKEN_ID}] (uint16), got [{low}, {high}]")
        actions = sample.get("actions")
        actions = None if actions is None else _to_numpy(actions).astype(np.float32)
        if actions is not None and actions.ndim != 2:
            raise ValueError(f"sample {index}: actions must be (N, A), got shape {actions.shape}")
        text = None if text is None else _to_numpy(text).astype(np.float16)
        if text is not None and text.ndim != 2:
            raise ValueError(f"sample {index}: encode_text must return (L, C) embeddings, got shape {text.shape}")
        schema = {
            "token_shape": list(ids.shape),
            "action_shape": None if actions is None else list(actions.shape),
            "text_dim": None if text is None else text.shape[1],
        }
        if self.manifest["schema"] is None:
            self.manifest["schema"] = schema
        for key, value in schema.items():
            expected = self.manifest["schema"][key]
            if value != expected:
                raise ValueError(f"sample {index}: {key} {value} differs from the cache's {expected}")
        if actions is not None:
            self.actions.append(actions)
        if text is not None:
            self.texts.append(text)
        self.tokens.append(ids.astype(np.uint16))
        caption, is_image = sample.get("caption", ""), bool(sample.get("is_image", False))
        self.records.append({"caption": caption, "is_image": is_image, "meta": sample.get("meta", {})})

    def write(self, folder: Path) -> None:
        """Write the collected samples into a new folder (files only; the caller renames it into place)."""
        folder.mkdir()
        _save_npy(folder / "tokens.npy", np.stack(self.tokens))
        if self.actions:
            _save_npy(folder / "actions.npy", np.stack(self.actions))
        if self.texts:
            _save_npy(folder / "text.npy", np.concatenate(self.texts))
            _save_npy(folder / "text_offsets.npy", np.cumsum([0] + [len(text) for text in self.texts], dtype=np.int64))
        (folder / "samples.json").write_text(json.dumps(self.records, default=_json_default))
        for written in folder.iterdir():
            fsync_file(written)


def write_token_cache(
    dataset: Dataset | Sequence[dict[str, Any]],
    encode_video: VideoEncoder,
    cache_dir: str | Path,
    *,
    samples_per_shard: int = 256,
    encode_text: TextEncoder | None = None,
    metadata: dict[str, Any] | None = None,
    num_workers: int = 0,
    progress: bool = True,
) -> Path:
    """Tokenize every sample's "frames" into `cache_dir` (see the module docstring); returns `cache_dir`.

    Resumable: shards already listed in the manifest are skipped, so the dataset must list the same
    samples in the same order on every run. `metadata` (e.g. the tokenizer's name and codebook size) is
    kept in the manifest and must match on resume. `num_workers` loads samples in DataLoader workers.
    One writer per directory at a time.
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    if isinstance(dataset, IterableDataset):
        # Resuming needs to know which samples a shard holds without replaying the stream.
        kind = type(dataset).__name__
        raise ValueError(f"write_token_cache needs a map-style dataset (len and indexing), got the iterable {kind}")
    cache_dir = Path(cache_dir)
    num_samples = len(dataset)
    metadata = json.loads(json.dumps(metadata or {}, default=_json_default))
    if (cache_dir / MANIFEST).exists():
        manifest = _read_manifest(cache_dir)
        expected = (num_samples, samples_per_shard, metadata)
        found = (manifest["num_samples"], manifest["samples_per_shard"], manifest.get("metadata"))
        if expected != found:
            raise ValueError(
                f"{cache_dir} holds a cache of {found[0]} samples in shards of {found[1]} with metadata {found[2]}, "
                f"not {expected[0]} in shards of {expected[1]} with metadata {expected[2]}; write to a new directory"
            )
    else:
        cache_dir.mkdir(parents=True, exist_ok=True)
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "num_samples": num_samples,
            "samples_per_shard": samples_per_shard,
            "metadata": metadata,
            "schema": None,  # set from the first sample
            "completed": [],
        }
        _write_manifest(cache_dir, manifest)
    num_shards = -(-num_samples // samples_per_shard)
    completed = set(manifest["completed"])
    pending = [shard for shard in range(num_shards) if shard not in completed]
    # Left by an interrupted run: half-written folders, or a shard renamed before the manifest listed it.
    for shard in pending:
        for stale in (cache_dir / f"{_shard_name(shard)}.partial", cache_dir / _shard_name(shard)):
            shutil.rmtree(stale, ignore_errors=True)

    def rows(shard: int) -> range:
        return range(shard * samples_per_shard, min((shard + 1) * samples_per_shard, num_samples))

    indices = [index for shard in pending for index in rows(shard)]
    loader = DataLoader(Subset(dataset, indices), batch_size=None, num_workers=num_workers, collate_fn=_identity)
    samples = iter(loader)
    with tqdm(total=num_samples, initial=num_samples - len(indices), unit="sample", disable=not progress) as bar:
        for shard in pending:
            writer = _ShardWriter(manifest)
            for index in rows(shard):
                sample = next(samples)
                if "frames" not in sample:
                    raise ValueError(f"sample {index} has no 'frames' to tokenize")
                text = encode_text(sample.get("caption", "")) if encode_text is not None else None
                writer.add(index, sample, encode_video(sample["frames"]), text)
                bar.update()
            partial = cache_dir / f"{_shard_name(shard)}.partial"
            try:
                writer.write(partial)
                partial.rename(cache_dir / _shard_name(shard))
            finally:
                shutil.rmtree(partial, ignore_errors=True)
            manifest["completed"] = sorted({*manifest["completed"], shard})
            _write_manifest(cache_dir, manifest)
    return cache_dir


class _Shard:
    """One completed shard, memory-mapped; raises TokenCacheError when its files do not match the manifest."""

    def __init__(self, folder: Path, count: int, schema: dict[str, Any]) -> None:
        try:
            self.tokens = np.load(folder / "tokens.npy", mmap_mode="r")
            self.records = json.loads((folder / "samples.json").read_text(), object_hook=_json_hook)
            expected = {"tokens": ((count, *schema["token_shape"]), np.uint16)}
            self.actions = self.text = self.text_offsets = None
            if schema["action_shape"] is not None:
                self.actions = np.load(folder / "actions.npy", mmap_mode="r")
                expected["actions"] = ((count, *schema["action_shape"]), np.float32)
            if schema["text_dim"] is not None:
                self.text = np.load(folder / "text.npy", mmap_mode="r")
                self.text_offsets = np.load(folder / "text_offsets.npy")
                expected["text_offsets"] = ((count + 1,), np.int64)
        except (OSError, ValueError) as error:
            raise TokenCacheError(f"corrupt token cache shard {folder}: {error}") from error
        for name, (shape, dtype) in expected.items():
            array = getattr(self, name)
            if array.shape != shape or array.dtype != dtype:
                found, wanted = f"{array.dtype} {array.shape}", f"{np.dtype(dtype)} {shape}"
                raise TokenCacheError(f"corrupt token cache shard {folder}: {name} is {found}, expected {wanted}")
        if len(self.records) != count:
            raise TokenCacheError(f"corrupt token cache shard {folder}: {len(self.records)} records, expected {count}")


class TokenCacheDataset(Dataset):
    """Reads a token cache: sample i is {"tokens": int64 (N, h, w), "caption", "actions": float32 (N, A) or None,
    "is_image", "meta"} plus "text" float32 (L, C) when the cache holds text embeddings.

    Refuses an incomplete cache unless `allow_incomplete`, which reads only the completed shards.
    """

    def __init__(self, cache_dir: str | Path, allow_incomplete: bool = False) -> None:
        self.cache_dir = Path(cache_dir)
        self.manifest = _read_manifest(self.cache_dir)
        size, total = self.manifest["samples_per_shard"], self.manifest["num_samples"]
        num_shards = -(-total // size)
        completed = sorted(self.manifest["completed"])
        if len(completed) < num_shards and not allow_incomplete:
            raise TokenCacheError(
                f"{self.cache_dir} is incomplete ({len(completed)} of {num_shards} shards); "
                "run write_token_cache again to finish it, or pass allow_incomplete=True"
            )
        self._shards = completed
        self._counts = [min(size, total - shard * size) for shard in completed]
        self._starts = np.cumsum([0] + self._counts).tolist()
        self._open: dict[int, _Shard] = {}

    @property
    def metadata(self) -> dict[str, Any]:
        """What the writer was given as `metadata` (e.g. the tokenizer and its codebook size)."""
        return self.manifest["metadata"]

    def __len__(self) -> int:
        return self._starts[-1]

    def __getstate__(self) -> dict[str, Any]:
        # Memory maps are reopened in each DataLoader worker rather than pickled.
        return {**self.__dict__, "_open": {}}

    def _shard(self, position: int) -> _Shard:
        if position not in self._open:
            folder = self.cache_dir / _shard_name(self._shards[position])
            self._open[position] = _Shard(folder, self._counts[position], self.manifest["schema"])
        return self._open[position]

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a token cache of {len(self)} samples")
        index %= len(self)
        position = bisect.bisect_right(self._starts, index) - 1
        row = index - self._starts[position]
        shard = self._shard(position)
        record = shard.records[row]
        sample = {
            "tokens": torch.from_numpy(shard.tokens[row].astype(np.int64)),
            "caption": record["caption"],
            "actions": None if shard.actions is None else torch.from_numpy(np.array(shard.actions[row])),
            "is_image": record["is_image"],
            "meta": copy.deepcopy(record["meta"]),  # callers may edit meta; the shard's records stay as read
        }
        if shard.text is not None:
            start, end = shard.text_offsets[row], shard.text_offsets[row + 1]
            sample["text"] = torch.from_numpy(shard.text[start:end].astype(np.float32))
        return sample
