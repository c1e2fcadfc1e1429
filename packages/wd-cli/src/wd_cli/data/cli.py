"""The `wd data` command group: `cache`, `curate`, `inspect`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import click
from wd_data import DataSourceError, TokenCacheError
from wd_data.curation import CurationConfig
from wd_data.datasets.video_text import VIDEO_EXTENSIONS

from wd_cli.errors import one_line_errors
from wd_cli.train.config import SOURCE_KINDS

kind_option = click.option("--kind", type=click.Choice(SOURCE_KINDS), default=None,
                           help="The source's kind when its path does not tell (see `wd data cache --help`).")
frames_option = click.option("--frames", type=click.IntRange(min=1), default=None,
                             help="Frames per sample (images per sample for image sources).")
size_option = click.option("--size", default=None, metavar="HxW", help="Frame size, e.g. 256 or 192x320.")
fps_option = click.option("--fps", type=click.FloatRange(min=0, min_open=True), default=None,
                          help="Frames per second picked from videos (default: every frame).")
options_option = click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
                              help="Another field of the source's wd_data config, e.g. split=mini_train (none: None).")


def one_line(command: Callable[..., Any]) -> Callable[..., Any]:
    """User mistakes and data that cannot be used end as one click error line, never a traceback."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with one_line_errors():
            try:
                return command(*args, **kwargs)
            except (DataSourceError, TokenCacheError, ImportError) as error:
                raise click.ClickException(" ".join(str(error).split())) from None

    return wrapper


@click.group()
def data() -> None:
    """Prepare data: pre-tokenize a source (cache), cut own footage into clips (curate), look inside (inspect).

    \b
    Example:
      wd data curate my_videos/ --out curated
      wd data cache curated --tokenizer runs/tokenizer --text-encoder runs/text --out caches/mine --frames 16
      wd data inspect caches/mine --tokenizer runs/tokenizer
    """


@data.command()
@click.argument("source")
@click.option("--tokenizer", required=True, help="VQGAN directory, pipeline, or `wd train tokenizer` run.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Token cache directory.")
@click.option("--text-encoder", default=None, help="Text encoder directory: store caption embeddings too.")
@kind_option
@frames_option
@size_option
@fps_option
@options_option
@click.option("--samples", type=click.IntRange(min=1), default=None,
              help="Cache only the first N samples (required for the endless synthetic worlds).")
@click.option("--samples-per-shard", type=click.IntRange(min=1), default=256, show_default=True,
              help="Samples per cache shard (tar sources: one cache shard per tar shard).")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Worker processes decoding samples (0: in this process).")
@click.option("--max-skip-rate", type=click.FloatRange(0, 1), default=0.1, show_default=True,
              help="Stop when more than this fraction of samples is unreadable (judged after 100).")
@click.option("--device", default=None, help="Tokenizer device (default: this rank's GPU, else the CPU).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
@one_line
def cache(source: str, tokenizer: str, out_dir: str, text_encoder: str | None, kind: str | None,
          frames: int | None, size: str | None, fps: float | None, options: tuple[str, ...], samples: int | None,
          samples_per_shard: int, workers: int, max_skip_rate: float, device: str | None, no_progress: bool) -> None:
    """Tokenize SOURCE once into a token cache that `wd train` reads (a `token_cache` source).

    SOURCE: a video folder (captions from name.txt beside each video), a .csv/.jsonl manifest (WebVid columns,
    or path + caption), a folder `wd data curate` wrote, an image folder, tar shards (a .tar, a folder of them,
    or a brace pattern such as 'laion/{00000..00099}.tar'), a nuScenes dataroot, or the world `shapes` /
    `drive`. A rerun continues where a killed one stopped; under torchrun each rank writes its own shards.

    \b
    Example:
      wd data cache webvid.csv --tokenizer pipe/tokenizer --text-encoder pipe/text_encoder --out caches/webvid \\
          --frames 16 --size 256 --fps 8 --workers 4
      torchrun --nproc-per-node 8 -m wd_cli data cache 'laion/{00000..00999}.tar' --tokenizer pipe/tokenizer \\
          --out caches/laion --frames 16 --size 256
    """
    from wd_cli.data.cache import cache_source, summary_lines
    from wd_cli.data.sources import source_config

    config = source_config(source, kind, frames, size, fps, options, max_skip_rate)
    summary = cache_source(config, tokenizer, out_dir, text_encoder, num_samples=samples,
                           samples_per_shard=samples_per_shard, workers=workers, device=device,
                           progress=not no_progress)
    for line in summary_lines(summary):
        click.echo(line)


def _video_files(paths: tuple[str, ...]) -> list[Path]:
    """The given files, and the videos found under the given folders (sorted)."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(item for item in path.rglob("*") if item.suffix.lower() in VIDEO_EXTENSIONS)
        else:
            found.append(path)
    if not found:
        raise click.ClickException(f"no videos ({', '.join(VIDEO_EXTENSIONS)}) in {', '.join(paths)}")
    return found


@data.command()
@click.argument("videos", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for clips.")
@click.option("--min-scene-seconds", type=click.FloatRange(min=0), default=CurationConfig.min_scene_seconds,
              show_default=True, help="Drop scenes shorter than this.")
@click.option("--min-flow", type=click.FloatRange(min=0), default=CurationConfig.min_mean_flow, show_default=True,
              help="Drop scenes whose mean optical flow (px/frame at a 128 px short side) is below this.")
@click.option("--scene-threshold", type=click.FloatRange(min=0), default=CurationConfig.scene_threshold,
              show_default=True, help="PySceneDetect ContentDetector threshold for a cut.")
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Frame rate of the written clips (default: the source's).")
@one_line
def curate(videos: tuple[str, ...], out_dir: str, min_scene_seconds: float, min_flow: float,
           scene_threshold: float, fps: float | None) -> None:
    """Cut VIDEOS (files or folders) into single-scene clips with enough motion, the paper's recipe for its
    self-collected data: scene cuts, an optical-flow filter, and the 10/50/90% keyframes for captioning.

    Writes OUT/<video>_<scene>.mp4, their keyframe JPEGs and OUT/manifest.jsonl (caption "" until you fill it
    in), which `wd data cache OUT` and a `video_text` source of `wd train` read as they are.

    \b
    Example:
      wd data curate my_videos/ --out curated --min-scene-seconds 3
    """
    from wd_data.curation import curate_videos

    files = _video_files(videos)
    config = CurationConfig(scene_threshold=scene_threshold, min_scene_seconds=min_scene_seconds,
                            min_mean_flow=min_flow, fps=fps)
    clips = curate_videos(files, out_dir, config)
    kept = sum(clip.kept for clip in clips)
    click.echo(f"kept {kept} of {len(clips)} scenes from {len(files)} videos -> {Path(out_dir) / 'manifest.jsonl'}")
    reasons = Counter(clip.reason.split(" (")[0].split(":")[0] for clip in clips if not clip.kept)
    for reason, count in reasons.most_common():
        click.echo(f"  dropped {count}: {reason}")


@data.command()
@click.argument("path")
@kind_option
@frames_option
@size_option
@fps_option
@options_option
@click.option("--samples", type=click.IntRange(min=1), default=8, show_default=True,
              help="Random samples read (and shown in the contact sheet).")
@click.option("--files", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Files (or tar records) probed for the size, fps and length distributions.")
@click.option("--sheet", type=click.Path(dir_okay=False), default=None,
              help="Contact sheet PNG (default: ./<name>-contact.png).")
@click.option("--no-sheet", is_flag=True, help="Write no contact sheet.")
@click.option("--tokenizer", default=None, help="Token caches: decode the contact sheet with this VQGAN.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random choice of samples.")
@one_line
def inspect(path: str, kind: str | None, frames: int | None, size: str | None, fps: float | None,
            options: tuple[str, ...], samples: int, files: int, sheet: str | None, no_sheet: bool,
            tokenizer: str | None, seed: int) -> None:
    """Report what PATH (any source `wd data cache` takes, or a token cache) holds and what is wrong with it:
    sample count, frame size / fps / length distributions, caption lengths, skipped rows and corrupt files with
    the first reasons, and a contact sheet of random samples.

    \b
    Example:
      wd data inspect webvid.csv --frames 16 --size 256
      wd data inspect caches/webvid --tokenizer pipe/tokenizer --sheet webvid.png
    """
    from wd_cli.data.inspect import inspect_cache, inspect_source
    from wd_cli.data.sources import source_config

    config = source_config(path, kind, frames, size, fps, options, max_skip_rate=1.0)
    sheet_path = None if no_sheet else sheet or f"{Path(config.path or config.kind).name}-contact.png"
    if config.kind == "token_cache":
        lines = inspect_cache(config.path, samples, sheet_path, tokenizer, seed)
    else:
        lines = inspect_source(config, samples, files, sheet_path, seed)
    for line in lines:
        click.echo(line)
