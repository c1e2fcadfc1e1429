"""Pre-tokenized datasets on disk, written once in shards and read back memory-mapped.

The writer splits its source into units: runs of `samples_per_shard` consecutive samples of a map-style dataset,
or the tar shards of a TarShardDataset. Each unit becomes one folder of the cache directory:
    shard-00000/shard.json        unit, sample count, schema, largest id, file sizes, skipped samples
    shard-00000/tokens.npy        uint16 (S, N, h, w) token ids
    shard-00000/samples.json      caption, is_image and meta of each sample
    shard-00000/actions.npy       float32 (S, N, A), when the samples carry actions
    shard-00000/text.npy          float16 (L_0 + ... + L_{S-1}, C) and text_offsets.npy int64 (S + 1,),
                                  when the writer was given a text encoder
A unit is written into `shard-XXXXX.partial/`, shard.json last, and renamed when complete: a folder without
`.partial` is a finished unit. Writing again skips finished units, so an interrupted job resumes where it stopped
and never writes a sample twice; several writers (ranks) share a directory by taking every world_size-th unit.
`manifest.json` holds the plan (unit count, metadata) from the start, and the list of shards once every unit is
finished, written by whichever writer finishes last. Samples that cannot be read are skipped and recorded.
"""

from __future__ import annotations

import bisect
import copy
import json
import shutil
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from wd_data._atomic import atomic_path, fsync_file
from wd_data.datasets.base import MAX_REASONS, SkipLog, SkippingDataset, check_skip_rate
from wd_data.datasets.tar_shards import TarShardDataset
from wd_data.errors import BadSampleError

FORMAT = "wd-token-cache"
VERSION = 2
MANIFEST = "manifest.json"
SHARD_INFO = "shard.json"
MAX_TOKEN_ID = np.iinfo(np.uint16).max
OPEN_SHARDS = 64  # memory-mapped shards kept open by a reader (each holds a few file descriptors)

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


def _shard_name(unit: int) -> str:
    return f"shard-{unit:05d}"


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array)


def _identity(item: Any) -> Any:
    return item


def read_cache_manifest(cache_dir: str | Path) -> dict[str, Any]:
    """A cache directory's manifest (plan, metadata, and when complete its shards); TokenCacheError if unusable."""
    cache_dir = Path(cache_dir)
    path = cache_dir / MANIFEST
    if not cache_dir.is_dir():
        raise TokenCacheError(f"no token cache at {cache_dir}: the directory does not exist")
    if not path.is_file():
        raise TokenCacheError(f"{cache_dir} is not a token cache: it has no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise TokenCacheError(f"corrupt token cache manifest {path}: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise TokenCacheError(f"{path} is not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise TokenCacheError(f"{path} is a {FORMAT} of version {manifest.get('version')}, this wd-data reads "
                              f"version {VERSION}: write the cache again into a new directory")
    required = {"plan", "metadata", "complete"} | ({"shards", "schema"} if manifest.get("complete") else set())
    missing = sorted(required - manifest.keys())
    if missing:
        raise TokenCacheError(f"corrupt token cache manifest {path}: missing {missing}")
    return manifest


def _write_manifest(cache_dir: Path, manifest: dict[str, Any]) -> None:
    with atomic_path(cache_dir / MANIFEST) as temporary:
        Path(temporary).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def finished_units(cache_dir: str | Path) -> dict[int, dict[str, Any]]:
    """unit -> its shard.json, for every finished unit of a cache directory (complete or not)."""
    finished = {}
    for folder in Path(cache_dir).glob("shard-*"):
        if folder.suffix == ".partial" or not (folder / SHARD_INFO).is_file():
            continue
        try:
            info = json.loads((folder / SHARD_INFO).read_text())
            finished[int(info["unit"])] = info
        except (ValueError, KeyError, TypeError, OSError):
            continue  # an unreadable shard.json: the unit is written again
    return finished


class _Schema:
    """The cache's sample layout (token shape, action shape or None, text width or None), set by the first
    sample (or a finished shard) and required of every other."""

    def __init__(self, value: dict[str, Any] | None) -> None:
        self.value = value

    def check(self, where: str, found: dict[str, Any]) -> None:
        if self.value is None:
            self.value = found
        for key, value in found.items():
            if value != self.value[key]:
                raise ValueError(f"{where}: {key} {value} differs from the cache's {self.value[key]}")


class _ShardWriter:
    """Collects the encoded samples (and the skips) of one unit."""

    def __init__(self, unit: int) -> None:
        self.unit = unit
        self.tokens: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.texts: list[np.ndarray] = []
        self.records: list[dict[str, Any]] = []
        self.skips = SkipLog()
        self.max_id = -1

    def add(self, where: str, sample: dict[str, Any], ids: Any, text: Any | None, schema: _Schema) -> None:
        ids = _to_numpy(ids)
        if ids.ndim != 3 or not np.issubdtype(ids.dtype, np.integer):
            found = f"{ids.dtype} {ids.shape}"
            raise ValueError(f"{where}: encode_video must return integer ids (N, h, w), got {found}")
        if ids.size and (ids.min() < 0 or ids.max() > MAX_TOKEN_ID):
            low, high = ids.min(), ids.max()
            raise ValueError(f"{where}: token ids must be in [0, {MAX_TOKEN_ID}] (uint16), got [{low}, {high}]")
        actions = sample.get("actions")
        actions = None if actions is None else _to_numpy(actions).astype(np.float32)
        if actions is not None and actions.ndim != 2:
            raise ValueError(f"{where}: actions must be (N, A), got shape {actions.shape}")
        text = None if text is None else _to_numpy(text).astype(np.float16)
        if text is not None and text.ndim != 2:
            raise ValueError(f"{where}: encode_text must return (L, C) embeddings, got shape {text.shape}")
        schema.check(where, {"token_shape": list(ids.shape),
                             "action_shape": None if actions is None else list(actions.shape),
                             "text_dim": None if text is None else text.shape[1]})
        if actions is not None:
            self.actions.append(actions)
        if text is not None:
            self.texts.append(text)
        self.tokens.append(ids.astype(np.uint16))
        self.max_id = max(self.max_id, int(ids.max()) if ids.size else -1)
        caption, is_image = sample.get("caption", ""), bool(sample.get("is_image", False))
        self.records.append({"caption": caption, "is_image": is_image, "meta": sample.get("meta", {})})

    def write(self, folder: Path, schema: _Schema) -> None:
        """Write the unit into a new folder, shard.json last (the caller renames the folder into place)."""
        folder.mkdir()
        if self.tokens:
            _save_npy(folder / "tokens.npy", np.stack(self.tokens))
            (folder / "samples.json").write_text(json.dumps(self.records, default=_json_default))
        if self.actions:
            _save_npy(folder / "actions.npy", np.stack(self.actions))
        if self.texts:
            _save_npy(folder / "text.npy", np.concatenate(self.texts))
            _save_npy(folder / "text_offsets.npy", np.cumsum([0] + [len(text) for text in self.texts], dtype=np.int64))
        files = {}
        for written in sorted(folder.iterdir()):
            fsync_file(written)
            files[written.name] = written.stat().st_size
        info = {"unit": self.unit, "count": len(self.tokens), "schema": schema.value if self.tokens else None,
                "max_id": self.max_id, "files": files, "skipped": self.skips.skipped,
                "skip_reasons": self.skips.reasons}
        (folder / SHARD_INFO).write_text(json.dumps(info))
        fsync_file(folder / SHARD_INFO)


@dataclass
class _Item:
    """What a unit reader sends the writer: a sample, a skipped one (`error`), or the end of the unit."""

    unit: int
    where: str = ""
    sample: dict[str, Any] | None = None
    error: str = ""
    end: bool = False


def _unit_range(unit: int, samples_per_shard: int, num_samples: int) -> range:
    return range(unit * samples_per_shard, min((unit + 1) * samples_per_shard, num_samples))


class _UnitReader(IterableDataset):
    """The items of the given units in order; DataLoader workers split the units (worker w: every K-th)."""

    def __init__(self, dataset: Any, units: list[int], samples_per_shard: int, num_samples: int | None) -> None:
        self.dataset, self.units = dataset, units
        self.samples_per_shard, self.num_samples = samples_per_shard, num_samples

    def _items(self, unit: int) -> Iterator[_Item]:
        if isinstance(self.dataset, TarShardDataset):
            for item in self.dataset.read_shard(unit):
                yield _Item(unit, item.where, item.sample, "" if item.error is None else str(item.error))
        else:
            # Bad samples are left out rather than replaced by their neighbours (SkippingDataset's __getitem__).
            load = self.dataset.load if isinstance(self.dataset, SkippingDataset) else self.dataset.__getitem__
            for index in _unit_range(unit, self.samples_per_shard, self.num_samples):
                try:
                    yield _Item(unit, f"sample {index}", load(index))
                except BadSampleError as error:
                    yield _Item(unit, f"sample {index}", error=str(error))
        yield _Item(unit, end=True)

    def __iter__(self) -> Iterator[_Item]:
        worker = get_worker_info()
        units = self.units if worker is None else self.units[worker.id :: worker.num_workers]
        for unit in units:
            yield from self._items(unit)


def _start(cache_dir: Path, plan: dict[str, Any], metadata: dict[str, Any]) -> None:
    """Write the manifest's plan, or check that an existing cache was planned the same way."""
    if (cache_dir / MANIFEST).exists():
        manifest = read_cache_manifest(cache_dir)
        if (manifest["plan"], manifest["metadata"]) != (plan, metadata):
            raise ValueError(f"{cache_dir} holds a cache planned as {manifest['plan']} with metadata "
                             f"{manifest['metadata']}, not {plan} with {metadata}; write to a new directory")
        return
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Ranks starting together write the same plan; each replace is atomic, so any of them may win.
    _write_manifest(cache_dir, {"format": FORMAT, "version": VERSION, "plan": plan, "metadata": metadata,
                                "complete": False})


def _finish(cache_dir: Path) -> bool:
    """List the shards in the manifest when every unit is finished; -> whether the cache is complete."""
    manifest = read_cache_manifest(cache_dir)
    finished = finished_units(cache_dir)
    units = range(manifest["plan"]["num_units"])
    if any(unit not in finished for unit in units):
        return False
    shards = [finished[unit] for unit in units]
    schemas = {json.dumps(info["schema"], sort_keys=True) for info in shards if info["count"]}
    if len(schemas) > 1:
        raise ValueError(f"{cache_dir}: shards written with different sample layouts {sorted(schemas)}")
    reasons = [reason for info in shards for reason in info["skip_reasons"]][:MAX_REASONS]
    manifest.update(complete=True, schema=json.loads(schemas.pop()) if schemas else None,
                    shards=[{key: info[key] for key in ("unit", "count", "skipped")} for info in shards],
                    num_samples=sum(info["count"] for info in shards),
                    num_skipped=sum(info["skipped"] for info in shards), skip_reasons=reasons)
    _write_manifest(cache_dir, manifest)
    return True


def write_token_cache(
    dataset: Dataset | Sequence[dict[str, Any]] | TarShardDataset,
    encode_video: VideoEncoder,
    cache_dir: str | Path,
    *,
    samples_per_shard: int = 256,
    encode_text: TextEncoder | None = None,
    metadata: dict[str, Any] | None = None,
    num_workers: int = 0,
    progress: bool = True,
    num_samples: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    max_skip_rate: float = 0.1,
) -> Path:
    """Tokenize every sample's "frames" into `cache_dir` (see the module docstring); returns `cache_dir`.

    `dataset`: a map-style dataset (or list) of sample dicts, of which the first `num_samples` (default: all),
    or a TarShardDataset. Resumable: finished units are skipped, so a map-style dataset must list the same
    samples in the same order on every run. `metadata` (e.g. the tokenizer's name and codebook size) is kept in
    the manifest and must match on resume. `num_workers` reads units in DataLoader worker processes. Writer
    `rank` of `world_size` takes every world_size-th unit; whichever finishes last lists the shards. Bad samples
    are skipped and recorded; more than `max_skip_rate` of them is a DataSourceError.
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not one of {world_size} writers")
    if isinstance(dataset, TarShardDataset):
        num_units, total = len(dataset.shards), None
    elif isinstance(dataset, IterableDataset):
        kind = type(dataset).__name__
        raise ValueError(f"write_token_cache reads a map-style dataset or a TarShardDataset, not the iterable {kind}")
    else:
        total = len(dataset) if num_samples is None else min(num_samples, len(dataset))
        num_units = -(-total // samples_per_shard)
    cache_dir = Path(cache_dir)
    metadata = json.loads(json.dumps(metadata or {}, default=_json_default))
    _start(cache_dir, {"num_units": num_units, "samples_per_shard": samples_per_shard, "num_samples": total},
           metadata)
    finished = finished_units(cache_dir)
    schema = _Schema(next((info["schema"] for info in finished.values() if info["count"]), None))
    mine = [unit for unit in range(rank, num_units, world_size)]
    pending = [unit for unit in mine if unit not in finished]
    for unit in pending:  # left by an interrupted run: half-written folders
        for stale in (cache_dir / f"{_shard_name(unit)}.partial", cache_dir / _shard_name(unit)):
            shutil.rmtree(stale, ignore_errors=True)
    log = SkipLog()  # this writer's units, finished ones included, judge the skip rate
    log.read = sum(finished[unit]["count"] for unit in mine if unit in finished)
    log.skipped = sum(finished[unit]["skipped"] for unit in mine if unit in finished)
    size = None if total is None else sum(len(_unit_range(unit, samples_per_shard, total)) for unit in mine)
    reader = _UnitReader(dataset, pending, samples_per_shard, total)
    loader = DataLoader(reader, batch_size=None, num_workers=min(num_workers, len(pending)), collate_fn=_identity)
    writers: dict[int, _ShardWriter] = {}
    with tqdm(total=size, initial=log.read + log.skipped, unit="sample", disable=not progress) as bar:
        for item in loader:
            writer = writers.setdefault(item.unit, _ShardWriter(item.unit))
            if item.end:
                _commit(cache_dir, writers.pop(item.unit), schema)
                continue
            if item.sample is None:
                writer.skips.skip(item.where, item.error)
                log.skip(item.where, item.error)
                check_skip_rate(log.read, log.skipped, max_skip_rate, str(cache_dir), log.reasons[0])
                bar.set_postfix(skipped=log.skipped)
            else:
                if "frames" not in item.sample:
                    raise ValueError(f"{item.where} has no 'frames' to tokenize")
                text = encode_text(item.sample.get("caption", "")) if encode_text is not None else None
                writer.add(item.where, item.sample, encode_video(item.sample["frames"]), text, schema)
                log.read += 1
            bar.update()
    _finish(cache_dir)
    return cache_dir


def _commit(cache_dir: Path, writer: _ShardWriter, schema: _Schema) -> None:
    partial = cache_dir / f"{_shard_name(writer.unit)}.partial"
    try:
        writer.write(partial, schema)
        partial.rename(cache_dir / _shard_name(writer.unit))
    finally:
        shutil.rmtree(partial, ignore_errors=True)


class _Shard:
    """One finished shard, memory-mapped; TokenCacheError when its files do not match its shard.json (sizes,
    count), the cache's schema, or the codebook (`id_limit`: its largest id must be below it)."""

    def __init__(self, folder: Path, count: int, schema: dict[str, Any], id_limit: int) -> None:
        try:
            info = json.loads((folder / SHARD_INFO).read_text())
            if info["count"] != count:
                raise TokenCacheError(f"{SHARD_INFO} says {info['count']} samples, the manifest {count}")
            if info["max_id"] >= id_limit:
                raise TokenCacheError(f"ids up to {info['max_id']}, past the codebook of {id_limit}")
            for name, size in info["files"].items():
                found = (folder / name).stat().st_size
                if found != size:
                    raise TokenCacheError(f"{name} is {found} bytes, {size} were written (truncated or replaced)")
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
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError, TokenCacheError) as error:
            raise TokenCacheError(f"corrupt token cache shard {folder}: {error}") from None
        for name, (shape, dtype) in expected.items():
            array = getattr(self, name)
            if array.shape != shape or array.dtype != dtype:
                found, wanted = f"{array.dtype} {array.shape}", f"{np.dtype(dtype)} {shape}"
                raise TokenCacheError(f"corrupt token cache shard {folder}: {name} is {found}, expected {wanted}")
        if not isinstance(self.records, list) or len(self.records) != count:
            raise TokenCacheError(f"corrupt token cache shard {folder}: its records do not hold {count} samples")
        offsets = self.text_offsets
        if offsets is not None and (offsets[0] != 0 or offsets[-1] != len(self.text) or np.any(np.diff(offsets) < 0)):
            raise TokenCacheError(f"corrupt token cache shard {folder}: text offsets do not index its text")


class TokenCacheDataset(SkippingDataset):
    """Reads a token cache: sample i is {"tokens": int64 (N, h, w), "caption", "actions": float32 (N, A) or None,
    "is_image", "meta"} plus "text" float32 (L, C) when the cache holds text embeddings.

    Every shard is checked when the cache is opened (file sizes, array headers and shapes, records, text
    offsets, largest id against the metadata's codebook_size); a bad shard is skipped, counted and logged.
    A sample whose ids turn out past the codebook when read is skipped the same way. Refuses an incomplete
    cache unless `allow_incomplete`, which reads the finished shards.
    """

    def __init__(self, cache_dir: str | Path, allow_incomplete: bool = False) -> None:
        self.cache_dir = Path(cache_dir)
        self.manifest = read_cache_manifest(self.cache_dir)
        if self.manifest["complete"]:
            shards, schema = self.manifest["shards"], self.manifest["schema"]
        else:
            finished = finished_units(self.cache_dir)
            if not allow_incomplete:
                raise TokenCacheError(
                    f"{self.cache_dir} is incomplete ({len(finished)} of {self.manifest['plan']['num_units']} "
                    "shards); run the cache writer again to finish it, or pass allow_incomplete=True")
            shards = [finished[unit] for unit in sorted(finished)]
            schema = next((info["schema"] for info in shards if info["count"]), None)
        self.id_limit = int(self.metadata.get("codebook_size") or MAX_TOKEN_ID + 1)
        self._units: list[int] = []
        counts = []
        for info in shards:
            if not info["count"]:
                continue
            folder = self.cache_dir / _shard_name(info["unit"])
            try:
                _Shard(folder, info["count"], schema, self.id_limit)
            except TokenCacheError as error:
                self.skips.skip(str(folder), error, count=info["count"])
                continue
            self._units.append(info["unit"])
            counts.append(info["count"])
        if not self._units:
            first = f"; first: {self.skips.reasons[0]}" if self.skips.reasons else ""
            raise TokenCacheError(f"{self.cache_dir}: no readable samples{first}")
        self.schema = schema
        self._counts = counts
        self._starts = np.cumsum([0] + counts).tolist()
        self._open: OrderedDict[int, _Shard] = OrderedDict()

    @property
    def metadata(self) -> dict[str, Any]:
        """What the writer was given as `metadata` (e.g. the tokenizer and its codebook size)."""
        return self.manifest["metadata"]

    def __len__(self) -> int:
        return self._starts[-1]

    @property
    def num_shards(self) -> int:
        """Shards read (those refused at open not counted)."""
        return len(self._units)

    def count_bad_ids(self) -> int:
        """Samples whose ids reach past the codebook, found by reading every token (what open does not do)."""
        return sum(int((self._shard(position).tokens.reshape(count, -1).max(axis=1) >= self.id_limit).sum())
                   for position, count in enumerate(self._counts))

    def __getstate__(self) -> dict[str, Any]:
        # Memory maps are reopened in each DataLoader worker rather than pickled.
        return {**self.__dict__, "_open": OrderedDict()}

    def _shard(self, position: int) -> _Shard:
        if position not in self._open:
            folder = self.cache_dir / _shard_name(self._units[position])
            self._open[position] = _Shard(folder, self._counts[position], self.schema, self.id_limit)
            if len(self._open) > OPEN_SHARDS:
                self._open.popitem(last=False)
        self._open.move_to_end(position)
        return self._open[position]

    def load(self, index: int) -> dict[str, Any]:
        position = bisect.bisect_right(self._starts, index) - 1
        row = index - self._starts[position]
        shard = self._shard(position)
        tokens = shard.tokens[row].astype(np.int64)
        if tokens.size and tokens.max() >= self.id_limit:
            raise BadSampleError(f"{_shard_name(self._units[position])} row {row}: token id {tokens.max()} is past "
                                 f"the codebook of {self.id_limit}")
        record = shard.records[row]
        sample = {
            "tokens": torch.from_numpy(tokens),
            "caption": record["caption"],
            "actions": None if shard.actions is None else torch.from_numpy(np.array(shard.actions[row])),
            "is_image": record["is_image"],
            "meta": copy.deepcopy(record["meta"]),  # callers may edit meta; the shard's records stay as read
        }
        if shard.text is not None:
            start, end = shard.text_offsets[row], shard.text_offsets[row + 1]
            sample["text"] = torch.from_numpy(shard.text[start:end].astype(np.float32))
        return sample
