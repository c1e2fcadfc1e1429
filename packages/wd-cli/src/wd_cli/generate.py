"""`wd generate`: run one task with a pipeline directory and write the video (and its tokens)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm
from wd_data import read_image, write_video
from wd_tokenizer.io import atomic_writer

from wd_cli.errors import one_line_errors
from wd_cli.media import read_actions, read_frames, read_mask
from wd_cli.pipeline import Box, Generation, SamplingOptions, WorldDreamerPipeline
from wd_cli.validation import FiniteFloatRange, check_generation, check_outputs

INPUTS = ("prompt", "image", "video", "mask", "box", "border", "actions", "mask_ratio", "every")
# Per task: the inputs it needs, and the ones it also accepts.
NEEDS = {"text2video": {"prompt"}, "image2video": {"image"}, "predict": {"video"}, "action2video": {"image", "actions"},
         "interpolate": {"video"}, "inpaint": {"video"}, "outpaint": {"video"}, "stylize": {"video", "prompt"}}
ACCEPTS = {"text2video": {"prompt", "actions"}, "image2video": {"image", "prompt"}, "predict": {"video", "prompt"},
           "action2video": {"image", "actions", "prompt"}, "interpolate": {"video", "every", "prompt"},
           "inpaint": {"video", "mask", "box", "prompt"}, "outpaint": {"video", "border", "prompt"},
           "stylize": {"video", "prompt", "mask_ratio"}}
# Tasks whose --frames is the number of frames to generate (interpolate spreads its keyframes over them; the
# video editing tasks read the first --frames frames of --video).
ROLLOUTS = ("text2video", "image2video", "predict", "action2video")
VIDEO_SUFFIXES = (".mp4", ".gif")


@dataclass
class GenerateArgs:
    """Everything `wd generate` was given; one field per flag."""

    task: str
    checkpoint: Path
    out: Path
    prompt: str | None = None
    image: Path | None = None
    video: Path | None = None
    mask: Path | None = None
    box: Box | None = None
    border: Box | None = None
    actions: Path | None = None
    mask_ratio: float | None = None
    every: int | None = None
    frames: int | None = None
    steps: int | None = None
    guidance: float | None = None
    temperature: float | None = None
    top_k: int | None = None
    plausibility: float | None = None
    seed: int = 0
    fps: float | None = None
    tokens_out: Path | None = None
    device: str = "auto"
    dtype: str = "auto"
    memory_limit: float | None = None
    no_progress: bool = False

    def sampler_flags(self) -> dict[str, int | float | None]:
        """The sampler settings the flags give, by SamplerConfig field (None where a flag was not given)."""
        return {"steps": self.steps, "guidance_scale": self.guidance, "temperature": self.temperature,
                "top_k": self.top_k, "plausibility": self.plausibility}


def check_args(args: GenerateArgs) -> None:
    """click.UsageError for a missing input, one the task does not use, or --mask together with --box."""
    given = {name for name in INPUTS if getattr(args, name) is not None}
    missing, unused = sorted(NEEDS[args.task] - given), sorted(given - ACCEPTS[args.task])
    if missing:
        raise click.UsageError(f"--task {args.task} needs {_flag(missing[0])}")
    if unused:
        raise click.UsageError(f"{_flag(unused[0])} does not apply to --task {args.task}")
    if args.task == "inpaint" and (args.mask is None) == (args.box is None):
        raise click.UsageError("--task inpaint needs exactly one of --mask and --box")
    if args.task == "interpolate" and (args.every is None) == (args.frames is None):
        raise click.UsageError("--task interpolate needs exactly one of --every and --frames")
    if args.out.suffix.lower() not in VIDEO_SUFFIXES:
        raise click.UsageError(f"--out {args.out}: the suffix picks the format, use one of {VIDEO_SUFFIXES}")
    if args.tokens_out is not None and args.tokens_out.suffix != ".npy":
        raise click.UsageError(f"--tokens-out {args.tokens_out}: tokens are written as .npy")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def run_task(pipeline: WorldDreamerPipeline, args: GenerateArgs, progress: tqdm | None = None) -> Generation:
    """Read the task's inputs and run it (frame count, sampler settings and seed from args); `progress`
    advances by one per decoding step."""
    options = SamplingOptions(seed=args.seed)
    if progress is not None:
        options["callback"] = lambda step, tokens: progress.update()
    options.update({key: value for key, value in args.sampler_flags().items() if value is not None})
    if args.frames is not None and args.task in ROLLOUTS:
        options["num_frames"] = args.frames
    match args.task:
        case "text2video":
            actions = None if args.actions is None else read_actions(args.actions)
            return pipeline.text_to_video(args.prompt, actions, **options)
        case "image2video":
            return pipeline.image_to_video(read_image(args.image), args.prompt, **options)
        case "predict":
            return pipeline.image_to_video(read_frames(args.video), args.prompt, **options)
        case "action2video":
            return pipeline.action_to_video(read_image(args.image), read_actions(args.actions), args.prompt, **options)
        case "interpolate":
            keyframes = read_frames(args.video)
            every = args.every or _every(len(keyframes), args.frames)
            return pipeline.interpolate(keyframes, every, args.prompt or "", **options)
    video = read_frames(args.video, args.frames)
    if args.task == "stylize":
        return pipeline.stylize(video, args.prompt, args.mask_ratio, **options)
    if args.task == "outpaint":
        return pipeline.outpaint(video, args.border, args.prompt or "", **options)
    mask = None if args.mask is None else read_mask(args.mask, len(video))
    return pipeline.inpaint(video, mask=mask, box=args.box, prompt=args.prompt or "", **options)


def _every(keyframes: int, frames: int) -> int:
    """The keyframe spacing that spreads `keyframes` over `frames` frames, first to last."""
    if keyframes < 2 or (frames - 1) % (keyframes - 1):
        raise ValueError(f"--frames {frames} cannot hold the video's {keyframes} frames as evenly spaced keyframes, "
                         f"first to last: (frames - 1) must be a multiple of {max(1, keyframes - 1)}")
    return (frames - 1) // (keyframes - 1)


def write_outputs(result: Generation, args: GenerateArgs, fps: float) -> None:
    """The video to args.out and, if asked, the tokens int64 (N, h, w) to args.tokens_out (both atomically)."""
    write_video(args.out, result.frames, fps=fps)
    if args.tokens_out is not None:
        args.tokens_out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(args.tokens_out) as temporary, open(temporary, "wb") as handle:
            np.save(handle, result.tokens)


def _parse_box(context: click.Context, parameter: click.Parameter, value: str | None) -> Box | None:
    if value is None:
        return None
    try:
        top, left, bottom, right = (int(part) for part in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected four integers T,L,B,R in pixels (e.g. 0,0,16,16), got {value!r}") from None
    return top, left, bottom, right


existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command()
@click.option("--task", type=click.Choice(list(NEEDS)), required=True, help="Which task to run.")
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path),
              help="A pipeline directory (WorldDreamerPipeline.save_pretrained, `wd train export`, the quickstart).")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output video, .mp4 or .gif.")
@click.option("--prompt", help="Text prompt (needed by text2video and stylize).")
@click.option("--image", type=existing_file, help="First frame (image2video, action2video).")
@click.option("--video", type=existing_file,
              help="Input video: the given frames (predict), the keyframes (interpolate), or the video to edit "
                   "(inpaint, outpaint, stylize).")
@click.option("--mask", type=existing_file, help="Inpainting mask image or video, white = regenerate.")
@click.option("--box", callback=_parse_box, metavar="T,L,B,R", help="Inpainting box in the video's pixels.")
@click.option("--border", callback=_parse_box, metavar="T,L,B,R",
              help="Outpainting: pixels of the output frame to regenerate on each side (default: widen the video "
                   "to the model's aspect ratio, generating what it leaves uncovered).")
@click.option("--actions", type=existing_file,
              help="CSV or JSON actions, one row per frame (action2video; text2video: text and actions together).")
@click.option("--mask-ratio", type=FiniteFloatRange(0, 1), help="Fraction of tokens stylize redraws.")
@click.option("--every", type=click.IntRange(min=2),
              help="Interpolate: the keyframes become every k-th frame (k - 1 new frames between each two).")
@click.option("--frames", type=click.IntRange(min=1),
              help="Frames to generate (text2video, image2video, predict, action2video; interpolate: the keyframes "
                   "spread first to last); the first frames of --video to use for inpaint, outpaint, stylize "
                   "(default: all). Past the model's window the video is generated in overlapping windows.")
@click.option("--steps", type=click.IntRange(min=1), help="Decoding steps (default: the pipeline's, 10).")
@click.option("--guidance", type=FiniteFloatRange(min=0), help="Classifier-free guidance scale (0 = none).")
@click.option("--temperature", type=FiniteFloatRange(min=0), help="Sampling temperature (0 = argmax).")
@click.option("--top-k", type=click.IntRange(min=1), help="Draw only from the k likeliest tokens.")
@click.option("--plausibility", type=FiniteFloatRange(0, 1, min_open=True),
              help="Guided decoding: drop tokens whose prompted probability is below this fraction of the "
                   "likeliest's (e.g. 0.05; default: the pipeline's, usually none).")
@click.option("--seed", type=click.IntRange(0, 2**64 - 1), default=0, show_default=True, help="Random seed.")
@click.option("--fps", type=FiniteFloatRange(min=0, min_open=True), help="Output frame rate (default: the pipeline's).")
@click.option("--tokens-out", type=click.Path(dir_okay=False, path_type=Path),
              help="Also save the tokens int64 (N, h, w) as .npy.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--dtype", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help="STPT precision (auto: bf16 where measured faster: CUDA, CPUs with bf16 units; else fp32).")
@click.option("--memory-limit", type=FiniteFloatRange(min=0, min_open=True), metavar="GIB",
              help="Memory a request may use (default: what is available; env WD_MEMORY_LIMIT_GB).")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def generate(**values: object) -> None:
    """Run one task of a pipeline and write the video.

    \b
    Example:
      wd generate --task text2video --prompt "a red circle moves up" --checkpoint runs/pipeline --out red.mp4
      wd generate --task image2video --image first.png --frames 32 --checkpoint runs/pipeline --out go.gif
      wd generate --task inpaint --video clip.mp4 --box 0,0,32,32 --checkpoint runs/pipeline --out fixed.mp4
      wd generate --task action2video --image road.png --actions left.csv --checkpoint runs/drive --out left.mp4
      wd generate --task predict --video first4.mp4 --frames 24 --checkpoint runs/pipeline --out next.mp4
      wd generate --task interpolate --video keys.mp4 --every 4 --checkpoint runs/pipeline --out smooth.mp4
      wd generate --task outpaint --video narrow.mp4 --checkpoint runs/pipeline --out wide.mp4
    """
    args = GenerateArgs(**values)
    check_args(args)
    with one_line_errors():
        check_outputs(args)
        pipeline = WorldDreamerPipeline.from_pretrained(args.checkpoint, device=args.device, dtype=args.dtype,
                                                        memory_limit_gb=args.memory_limit)
        check_generation(pipeline, args)
        with tqdm(desc=f"{args.task}", unit="step", disable=args.no_progress) as progress:
            result = run_task(pipeline, args, progress)
        write_outputs(result, args, args.fps or pipeline.defaults.fps)
    frames, height, width, _ = result.frames.shape
    click.echo(f"wrote {args.out} ({frames} frames, {height}x{width})"
               + (f" and {args.tokens_out}" if args.tokens_out else ""))
