"""`wd data inspect`: what a source or a token cache holds, what is wrong with it, and a contact sheet.

For a source: the sample count, the files' size / fps / frame-count distributions (probing up to `max_files`
files or tar records, drawn at random), caption lengths, skipped rows and corrupt files with the first reasons,
then `num_samples` random samples read as `wd train` reads them. For a cache: its plan and completeness, the
shards refused at open and the samples skipped when it was written, every id checked against the codebook,
caption lengths, and a sheet of random samples (decoded with --tokenizer, else token ids as colours).
"""

from __future__ import annotations

import io
import itertools
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from wd_data import ImageFolderDataset, NuScenesDataset, TarShardDataset, TokenCacheDataset, VideoTextDataset
from wd_data.datasets import SkipLog
from wd_data.datasets.tar_shards import MEDIA_EXTENSIONS, record_caption
from wd_data.datasets.video_text import read_caption_file
from wd_data.errors import BadSampleError
from wd_data.token_cache import read_cache_manifest
from wd_data.video_io import probe_video

from wd_cli.train.config import SourceConfig
from wd_cli.train.data import open_source
from wd_cli.train.trainer import open_tokenizer

TILE = 96  # contact sheet tile height in pixels
SHEET_FRAMES = 8  # frames per sample shown, evenly spaced


@dataclass
class FileStats:
    """Distributions over the probed files (or tar records) of a source."""

    sizes: Counter[str] = field(default_factory=Counter)
    fps: Counter[str] = field(default_factory=Counter)
    frames: list[int] = field(default_factory=list)
    caption_words: list[int] = field(default_factory=list)
    corrupt: SkipLog = field(default_factory=SkipLog)
    probed: int = 0

    def video(self, source: Any) -> None:
        info = probe_video(source)
        self.sizes[f"{info.width}x{info.height}"] += 1
        self.fps[f"{info.fps:g}" if info.fps else "unknown"] += 1
        self.frames.append(round(info.duration * info.fps) if info.fps else 0)

    def image(self, source: Any) -> None:
        try:
            with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
                self.sizes[f"{image.width}x{image.height}"] += 1
        except (OSError, ValueError) as error:
            raise BadSampleError(f"cannot read the image header ({error})") from None

    def caption(self, text: str) -> None:
        self.caption_words.append(len(text.split()))


def _spread(values: list[int]) -> str:
    if not values:
        return "none"
    array = np.asarray(values)
    return f"min {array.min()} median {int(np.median(array))} max {array.max()}"


def _top(counter: Counter[str], count: int = 4) -> str:
    shown = ", ".join(f"{value} x{number}" for value, number in counter.most_common(count))
    rest = len(counter) - count
    return shown + (f", {rest} more" if rest > 0 else "") if counter else "none"


def _probe(stats: FileStats, where: str, read: Any, *args: Any) -> None:
    """Count one probed file; a file `read(stats, *args)` cannot read counts as corrupt."""
    stats.probed += 1
    try:
        read(stats, *args)
    except BadSampleError as error:
        stats.corrupt.skip(where, error)


def _video_file(stats: FileStats, path: Path, caption: str | Path) -> None:
    stats.video(path)
    stats.caption(caption if isinstance(caption, str) else read_caption_file(caption))


def _image_file(stats: FileStats, path: Path, caption: str | Path) -> None:
    stats.image(path)
    stats.caption(caption if isinstance(caption, str) else read_caption_file(caption))


def _tar_record(stats: FileStats, record: dict[str, Any] | BadSampleError, media: str) -> None:
    if isinstance(record, BadSampleError):
        raise record
    stats.caption(record_caption(record))
    data = next((record[ext] for ext in MEDIA_EXTENSIONS[media] if ext in record), None)
    if data is None:
        raise BadSampleError(f"no {media} member")
    (stats.video if media == "video" else stats.image)(data)


def file_stats(dataset: Any, max_files: int, rng: random.Random) -> FileStats:
    """Probe up to `max_files` of the source's files (random ones; tar records: the first ones)."""
    stats = FileStats()
    if isinstance(dataset, VideoTextDataset):
        for path, caption in rng.sample(dataset.items, min(max_files, len(dataset.items))):
            _probe(stats, str(path), _video_file, path, caption)
    elif isinstance(dataset, ImageFolderDataset):
        for path in rng.sample(dataset.images, min(max_files, len(dataset.images))):
            _probe(stats, str(path), _image_file, path, path.with_suffix(".txt"))
    elif isinstance(dataset, NuScenesDataset):
        for clip in rng.sample(dataset.clips, min(max_files, len(dataset.clips))):
            _probe(stats, clip["paths"][0], _image_file, Path(clip["paths"][0]), clip["caption"])
    elif isinstance(dataset, TarShardDataset):
        records = ((url, record) for shard, url in enumerate(dataset.shards) for record in dataset.records(shard))
        for url, record in itertools.islice(records, max_files):
            where = url if isinstance(record, BadSampleError) else f"{url}:{record['__key__']}"
            _probe(stats, where, _tar_record, record, dataset.media)
    return stats


def _samples(dataset: Any, count: int, rng: random.Random) -> list[dict[str, Any]]:
    if isinstance(dataset, TarShardDataset):
        return dataset.head(count)
    indices = rng.sample(range(len(dataset)), min(count, len(dataset)))
    return [dataset[index] for index in indices]


def _tile_row(frames: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> one row of up to SHEET_FRAMES frames, each TILE pixels high."""
    picked = frames[np.linspace(0, len(frames) - 1, min(SHEET_FRAMES, len(frames))).round().astype(int)]
    width = max(1, round(TILE * frames.shape[2] / frames.shape[1]))
    tiles = [np.asarray(Image.fromarray(frame).resize((width, TILE), Image.Resampling.NEAREST)) for frame in picked]
    row = np.concatenate(tiles, axis=1)
    return np.pad(row, ((0, 2), (0, width * SHEET_FRAMES - row.shape[1]), (0, 0)))


def write_contact_sheet(clips: list[np.ndarray], path: str | Path) -> Path:
    """One row per clip (uint8 (N, H, W, 3)), up to SHEET_FRAMES frames each, into a PNG."""
    rows = [_tile_row(np.asarray(clip)) for clip in clips]
    width = max(row.shape[1] for row in rows)
    sheet = np.concatenate([np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0))) for row in rows])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path)
    return Path(path)


def token_colours(ids: torch.Tensor) -> np.ndarray:
    """Token ids (N, h, w) -> uint8 (N, h, w, 3), one fixed colour per id: structure without a decoder."""
    palette = np.random.default_rng(0).integers(0, 256, (int(ids.max()) + 1, 3), dtype=np.uint8)
    return palette[ids.numpy()]


def inspect_source(source: SourceConfig, num_samples: int, max_files: int, sheet: str | Path | None,
                   seed: int = 0) -> list[str]:
    """The report lines for a source; writes the contact sheet when `sheet` is given."""
    rng = random.Random(seed)
    dataset = open_source(source, "SOURCE").dataset
    count = f"{len(dataset.shards)} shards" if isinstance(dataset, TarShardDataset) else f"{len(dataset)} samples"
    lines = [f"{source.path or source.kind}: a {source.kind} source, {count}"]
    skipped_at_open = getattr(dataset, "num_skipped", 0)
    stats = file_stats(dataset, max_files, rng)
    if stats.probed:
        lines.append(f"files probed: {stats.probed}; sizes {_top(stats.sizes)}")
        if stats.frames:
            lines.append(f"  fps {_top(stats.fps)}; frames {_spread(stats.frames)}")
        lines.append(f"  caption words {_spread(stats.caption_words)}, "
                     f"{sum(words == 0 for words in stats.caption_words)} empty")
        lines.append(f"corrupt files: {stats.corrupt.skipped} of {stats.probed} probed")
        lines += [f"  {reason}" for reason in stats.corrupt.reasons]
    if skipped_at_open:
        lines.append(f"rows skipped when opened: {skipped_at_open}")
        lines += [f"  {reason}" for reason in dataset.skips.reasons]
    samples = _samples(dataset, num_samples, rng)
    shapes = Counter("x".join(map(str, sample["frames"].shape)) for sample in samples)
    lines.append(f"samples read: {len(samples)} ({_top(shapes)}), "
                 f"{getattr(dataset, 'num_skipped', 0) - skipped_at_open} skipped while reading")
    if sheet is not None and samples:
        lines.append(f"contact sheet: {write_contact_sheet([s['frames'] for s in samples], sheet)}")
    return lines


def inspect_cache(path: str | Path, num_samples: int, sheet: str | Path | None, tokenizer: str | None = None,
                  seed: int = 0) -> list[str]:
    """The report lines for a token cache; checks every id; writes the contact sheet when `sheet` is given."""
    manifest = read_cache_manifest(path)
    cache = TokenCacheDataset(path, allow_incomplete=True)
    plan, schema = manifest["plan"], cache.schema
    status = "complete" if manifest["complete"] else f"INCOMPLETE ({cache.num_shards} shards readable of " \
                                                     f"{plan['num_units']}; run wd data cache again to finish it)"
    lines = [f"{path}: a token cache, {status}",
             f"samples: {len(cache)} of {schema['token_shape']} tokens, codebook {cache.id_limit}, text dim "
             f"{schema['text_dim']}, actions {schema['action_shape']}"]
    if manifest["complete"]:
        lines.append(f"skipped when written: {manifest['num_skipped']}")
        lines += [f"  {reason}" for reason in manifest["skip_reasons"]]
    lines.append(f"shards refused at open: {cache.num_skipped} samples")
    lines += [f"  {reason}" for reason in cache.skips.reasons]
    lines.append(f"samples with ids past the codebook: {cache.count_bad_ids()}")
    rng = random.Random(seed)
    samples = [cache[index] for index in rng.sample(range(len(cache)), min(num_samples, len(cache)))]
    words = [len(sample["caption"].split()) for sample in samples]
    lines.append(f"caption words (of {len(samples)} samples) {_spread(words)}, {words.count(0)} empty; "
                 f"images {sum(sample['is_image'] for sample in samples)}")
    if sheet is not None and samples:
        vqgan = open_tokenizer(tokenizer, "cpu", "--tokenizer")
        clips = [vqgan.decode_video(s["tokens"]).numpy() if vqgan else token_colours(s["tokens"]) for s in samples]
        shown = "decoded" if vqgan else "token ids as colours (pass --tokenizer to decode)"
        lines.append(f"contact sheet: {write_contact_sheet(clips, sheet)} ({shown})")
    return lines
