"""`wd play`: load a pipeline and serve the page (needs the `play` extra: starlette, uvicorn, websockets)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import click

from wd_cli.errors import one_line_errors

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class PlayConfig:
    """Everything `wd play` was given; one field per flag."""

    checkpoint: Path
    host: str = "127.0.0.1"
    port: int = 8765
    out: Path = Path("wd-play")
    steps: int | None = None
    frames_per_window: int | None = None
    fps: float | None = None
    turn_yaw: float = 0.06
    max_speed: float = 12.0
    max_drive_frames: int = 4000
    max_upload_mb: float = 32.0
    max_upload_pixels: int = 4096 * 4096
    max_upload_frames: int = 64
    device: str = "auto"
    dtype: str = "auto"


def _server_module() -> ModuleType:
    """wd_cli.play.server, or a one-line error naming the extra when its libraries are not installed."""
    try:
        from wd_cli.play import server
    except ModuleNotFoundError as error:
        raise click.ClickException(f"wd play needs {error.name}: pip install 'wd-cli[play]'") from None
    return server


@click.command()
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="A pipeline directory (the quickstart's OUT/pipeline, `wd train export`, save_pretrained).")
@click.option("--host", default=PlayConfig.host, show_default=True,
              help="Address to listen on; anything but localhost lets other machines use the model.")
@click.option("--port", type=click.IntRange(0, 65535), default=PlayConfig.port, show_default=True,
              help="Port (0: any free one).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=PlayConfig.out, show_default=True,
              help="Directory for task results and downloaded drives; the server writes nowhere else.")
@click.option("--steps", type=click.IntRange(min=1), help="Decoding steps per drive window (default: the pipeline's).")
@click.option("--frames-per-window", type=click.IntRange(min=1),
              help="New frames per drive window (default: adapt to the machine, the fewest that keep up with --fps).")
@click.option("--fps", type=click.FloatRange(min=0, min_open=True),
              help="Drive playback rate (default: the pipeline's).")
@click.option("--turn-yaw", type=click.FloatRange(min=0, min_open=True), default=PlayConfig.turn_yaw, show_default=True,
              help="Yaw change (rad per frame) while left or right is held.")
@click.option("--max-speed", type=click.FloatRange(min=0, min_open=True), default=PlayConfig.max_speed,
              show_default=True, help="Top speed (m/s) up can reach.")
@click.option("--max-drive-frames", type=click.IntRange(min=2), default=PlayConfig.max_drive_frames, show_default=True,
              help="A drive stops at this many frames (they are kept for its download).")
@click.option("--max-upload-mb", type=click.FloatRange(min=0, min_open=True), default=PlayConfig.max_upload_mb,
              show_default=True, help="Largest upload accepted.")
@click.option("--max-upload-pixels", type=click.IntRange(min=1), default=PlayConfig.max_upload_pixels,
              show_default=True, help="Most pixels of an uploaded frame (checked before decoding).")
@click.option("--max-upload-frames", type=click.IntRange(min=1), default=PlayConfig.max_upload_frames,
              show_default=True, help="Frames read from an uploaded video.")
@click.option("--device", default=PlayConfig.device, show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--dtype", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default=PlayConfig.dtype,
              show_default=True,
              help="STPT precision (auto: bf16 where measured faster: CUDA, CPUs with bf16 units; else fp32).")
def play(**values: object) -> None:
    """Drive the world model live in a web page, and run its tasks from forms.

    Starts a local web server and prints its address: open it in a browser. Arrow keys (or the buttons) steer
    and change speed, and the model continues the video window by window with the actions held.

    \b
    Example:
      wd play --checkpoint wd-quickstart/pipeline
      wd play --checkpoint runs/pipeline --port 0 --steps 6 --out /tmp/play
    """
    config = PlayConfig(**values)
    server = _server_module()
    from wd_cli.pipeline import WorldDreamerPipeline
    from wd_cli.play.drive import DriveSettings
    from wd_cli.play.player import DriveOptions
    from wd_cli.play.uploads import UploadLimits

    with one_line_errors():
        pipeline = WorldDreamerPipeline.from_pretrained(config.checkpoint, device=config.device, dtype=config.dtype)
        drive = DriveOptions(fps=config.fps or pipeline.defaults.fps, steps=config.steps,
                             frames_per_window=config.frames_per_window, max_frames=config.max_drive_frames,
                             settings=DriveSettings(turn_yaw=config.turn_yaw, max_speed=config.max_speed,
                                                    start_speed=min(DriveSettings.start_speed, config.max_speed)))
        limits = UploadLimits(max_bytes=round(config.max_upload_mb * 2**20), max_pixels=config.max_upload_pixels,
                              max_frames=config.max_upload_frames)
        app = server.PlayServer(pipeline, config.out, drive, limits).app()
        listener = server.bind(config.host, config.port)
    if config.host not in LOCAL_HOSTS:
        click.echo(f"warning: listening on {config.host}: other machines can reach this page and use the model")
    click.echo(f"wd play: open {server.address(listener)}  (results go to {config.out}; Ctrl+C stops)")
    # uvicorn shuts down on Ctrl+C, then raises it again for the caller: here that is the normal way to stop.
    with contextlib.suppress(KeyboardInterrupt):
        server.serve(app, listener)
    click.echo("wd play: stopped")
