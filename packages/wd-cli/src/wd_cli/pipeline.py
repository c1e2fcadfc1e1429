"""WorldDreamerPipeline: tokenizer + STPT + text encoder + MaskGIT sampler, one method per task of the paper.

Every task returns a `Generation`: frames uint8 (N, H, W, 3), tokens int64 (N, h, w) and known bool (N, h, w)
(True where the task gave the token). Pixel inputs of another size are resized to cover the model's size and
centre-cropped (outpainting's widening scales them to fit inside instead). Every task, at any length, runs
through `wd_cli.windowing`: a video longer than the model's window (`defaults.num_frames`) is decoded in spans
(edits: half-overlapping windows decoded together; rollouts: one window), each continuing from at least
`defaults.context_frames` final frames.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypedDict, Unpack

import numpy as np
import torch
import wd_masking
from wd_masking.sampler import StepCallback
from wd_stpt import STPT, STPTCondition
from wd_tokenizer import VQGAN
from wd_tokenizer.fieldtypes import check_field_types

from wd_cli.atomic import atomic_directory
from wd_cli.devices import autocast, resolve_device, resolve_dtype
from wd_cli.limits import MemoryLimitError, generation_memory, widest_span
from wd_cli.media import fit_frames, fit_inside, fit_mask
from wd_cli.pipeline_file import PIPELINE_FILE, read_pipeline_file, write_pipeline_file
from wd_cli.text_encoders import CachedTextEncoder, TextEncoder, load_text_encoder, unwrap
from wd_cli.validation import check_actions, check_finite_weights
from wd_cli.windowing import LongVideo, WindowSampler, co_decoding, span_frames

PARTS = ("tokenizer", "stpt", "text_encoder")
Box = tuple[int, int, int, int]


@dataclass
class PipelineDefaults:
    """Sampler settings and the clip shape the STPT was trained at (pipeline.json's "defaults")."""

    steps: int = 10
    guidance_scale: float = 3.0  # the paper's beta; 0 = no guidance
    temperature: float = 1.0
    choice_temperature: float = 4.5
    top_k: int | None = None
    plausibility: float | None = None  # guided decoding: drop tokens below this fraction of the prompt's likeliest
    num_frames: int = 16  # frames of one window (the model's N)
    height: int = 256  # pixels of a frame
    width: int = 256
    fps: float = 8.0
    context_frames: int = 4  # frames a rollout window continues from
    stylize_mask_ratio: float = 0.5  # fraction of tokens stylization redraws

    def __post_init__(self) -> None:
        check_field_types(self, "defaults")
        self.sampler_config()  # validates the sampler fields
        if min(self.num_frames, self.height, self.width) < 1 or not self.fps > 0:
            raise ValueError(f"num_frames, height, width and fps must be positive, got {self}")
        if not 1 <= self.context_frames < self.num_frames:
            raise ValueError(f"context_frames must be in [1, num_frames={self.num_frames}), got {self.context_frames}")
        if not 0 <= self.stylize_mask_ratio <= 1:
            raise ValueError(f"stylize_mask_ratio must be in [0, 1], got {self.stylize_mask_ratio}")

    def sampler_config(self, **overrides: Any) -> wd_masking.SamplerConfig:
        """The sampler settings, with `overrides` (None values ignored) replacing the defaults."""
        fields = {name: getattr(self, name) for name in ("steps", "guidance_scale", "temperature",
                                                          "choice_temperature", "top_k", "plausibility")}
        fields.update({name: value for name, value in overrides.items() if value is not None})
        return wd_masking.SamplerConfig(**fields)

    @classmethod
    def from_dict(cls, values: dict) -> PipelineDefaults:
        """Inverse of `dataclasses.asdict`; unknown fields are a ValueError."""
        unknown = set(values) - {field.name for field in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown defaults {sorted(unknown)}")
        return cls(**values)


class SamplingOptions(TypedDict, total=False):
    """Keyword options every task takes; a missing one falls back to the pipeline's defaults."""

    num_frames: int  # output frames (text/image/action to video); longer than the window rolls out
    steps: int
    guidance_scale: float
    temperature: float
    choice_temperature: float
    top_k: int | None
    plausibility: float | None
    seed: int  # one torch.Generator on the device per call; default 0
    callback: StepCallback  # callback(step, tokens) after every decoding step of every window


class Generation(NamedTuple):
    """A task's result: frames uint8 (N, H, W, 3), tokens int64 (N, h, w), known bool (N, h, w)."""

    frames: np.ndarray
    tokens: np.ndarray
    known: np.ndarray


class WorldDreamerPipeline:
    """Tokenizer, STPT and text encoder wired to the MaskGIT sampler (paper Fig. 4); see the module docstring."""

    def __init__(
        self, tokenizer: VQGAN, stpt: STPT, text_encoder: TextEncoder, defaults: PipelineDefaults | None = None
    ) -> None:
        self.defaults = defaults or PipelineDefaults()
        _check_parts(tokenizer, stpt, text_encoder, self.defaults)
        self.tokenizer, self.stpt = tokenizer.eval(), stpt.eval()
        cached = isinstance(text_encoder, CachedTextEncoder)
        self.text_encoder = text_encoder if cached else CachedTextEncoder(text_encoder)
        self.device = next(stpt.parameters()).device
        self.dtype = torch.float32
        self.memory_limit_gb: float | None = None  # None: the memory available (see limits.py)

    @property
    def mask_id(self) -> int:
        """The [MASK] token id, one past the last real code."""
        return self.stpt.config.codebook_size

    @property
    def token_shape(self) -> tuple[int, int]:
        """(h, w) of one frame's tokens at the model's pixel size."""
        f = self.tokenizer.downsample_factor
        return self.defaults.height // f, self.defaults.width // f

    def to(
        self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
    ) -> WorldDreamerPipeline:
        """Move tokenizer and STPT to `device` ("auto": cuda if available) and run the STPT under `dtype`
        autocast ("bf16", "fp16", "fp32"; fp16 on the CPU runs in fp32). The tokenizer always runs in fp32."""
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.tokenizer.to(self.device)
        self.stpt.to(self.device)
        return self

    # -- tasks ------------------------------------------------------------------------------------------------

    def text_to_video(
        self, prompt: str, actions: np.ndarray | None = None, **options: Unpack[SamplingOptions]
    ) -> Generation:
        """A clip from the prompt alone, or from the prompt and actions float (M, A) together (M frames, row i
        conditioning frame i)."""
        actions = self._actions(actions, options)
        tokens, known = wd_masking.text_to_video(1, self._length(options, 0), *self.token_shape, self.mask_id)
        return self._generate(tokens, known, prompt, actions, options)

    def image_to_video(
        self, image: np.ndarray, prompt: str | None = None, **options: Unpack[SamplingOptions]
    ) -> Generation:
        """Continue image uint8 (H, W, 3), or k given frames (k, H, W, 3) (prediction), to `num_frames` frames
        (the given ones included)."""
        return self._continue(image, prompt, None, options)

    def action_to_video(
        self, image: np.ndarray, actions: np.ndarray, prompt: str | None = None, **options: Unpack[SamplingOptions]
    ) -> Generation:
        """Drive from image uint8 (H, W, 3) (or k frames) with actions float (M, A), one row per output frame:
        M frames come out, actions[i] conditioning frame i."""
        return self._continue(image, prompt, self._actions(actions, options), options)

    def interpolate(
        self, keyframes: np.ndarray, every: int, prompt: str = "", **options: Unpack[SamplingOptions]
    ) -> Generation:
        """Keyframes uint8 (M, H, W, 3) become frames 0, every, 2 * every, ... of (M - 1) * every + 1 frames; the
        ones between are generated (the first and last frame of N: two keyframes, every = N - 1)."""
        options = self._whole_video((len(keyframes) - 1) * every + 1, options)
        tokens, known = wd_masking.frame_interpolation(self.encode(keyframes)[None], every, self.mask_id)
        return self._generate(tokens, known, prompt, None, options)

    def inpaint(
        self,
        video: np.ndarray,
        mask: np.ndarray | None = None,
        box: Box | None = None,
        prompt: str = "",
        **options: Unpack[SamplingOptions],
    ) -> Generation:
        """Regenerate a region of video uint8 (M, H, W, 3), given in its pixels as mask bool (H, W) / (M, H, W)
        or box (top, left, bottom, right) (bottom/right exclusive); every token outside it is kept."""
        if (mask is None) == (box is None):
            raise ValueError("give exactly one of mask or box")
        video = np.asarray(video)
        options = self._whole_video(len(video), options)
        region = wd_masking.box_region(*video.shape[-3:-1], box) if box is not None else torch.as_tensor(mask)
        if tuple(region.shape[-2:]) != video.shape[-3:-1] or (region.ndim == 3 and len(region) != len(video)):
            raise ValueError(f"mask {tuple(region.shape)} does not fit the video's {video.shape[:-1]} frames")
        region = fit_mask(region, (self.defaults.height, self.defaults.width))
        tokens, known = wd_masking.inpainting(self.encode(video)[None], region, self.mask_id,
                                              downsample_factor=self.tokenizer.downsample_factor)
        return self._generate(tokens, known, prompt, None, options)

    def outpaint(
        self, video: np.ndarray, border: Box | None = None, prompt: str = "", **options: Unpack[SamplingOptions]
    ) -> Generation:
        """Regenerate border = (top, left, bottom, right) pixels of every frame of video uint8 (M, H, W, 3) (fitted
        to the model's frame), or, with no border, widen it: the video is scaled to fit inside the model's frame
        and what it leaves uncovered (the sides of a narrower video) is generated."""
        options = self._whole_video(len(video), options)
        size = (self.defaults.height, self.defaults.width)
        if border is None:
            frames, keep = fit_inside(video, size)
        else:
            frames, (top, left, bottom, right) = video, border
            if min(border) < 0 or top + bottom >= size[0] or left + right >= size[1]:
                raise ValueError(f"border {border} (top, left, bottom, right) must be >= 0 and leave some of the "
                                 f"{size[0]}x{size[1]} frame")
            keep = (top, left, size[0] - bottom, size[1] - right)
        tokens, known = wd_masking.outpainting(self.encode(frames)[None], keep, self.mask_id,
                                               downsample_factor=self.tokenizer.downsample_factor)
        return self._generate(tokens, known, prompt, None, options)

    def stylize(
        self, video: np.ndarray, prompt: str, mask_ratio: float | None = None, **options: Unpack[SamplingOptions]
    ) -> Generation:
        """Redraw a random `mask_ratio` of video's tokens (default: defaults.stylize_mask_ratio) under the prompt,
        the rest anchoring the content."""
        options = self._whole_video(len(video), options)
        ratio = self.defaults.stylize_mask_ratio if mask_ratio is None else mask_ratio
        # The mask's draw has its own generator (on the CPU, where the tokens are): the sampler's starts fresh.
        generator = torch.Generator().manual_seed(int(options.get("seed", 0)))
        tokens, known = wd_masking.stylization(self.encode(video)[None], ratio, self.mask_id, generator=generator)
        return self._generate(tokens, known, prompt, None, options)

    def window_sampler(self, prompt: str = "", **options: Unpack[SamplingOptions]) -> WindowSampler:
        """What `wd_cli.windowing.LongVideo.step` calls to generate one window, or a span of windows decoded
        together, under `prompt`: one seeded generator for every span it samples (a live driver keeps one per
        session)."""
        if "num_frames" in options:
            raise TypeError("num_frames does not apply to one window: the LongVideo it steps sets the frames")
        config, generator, callback = self._config(options), self._generator(options), options.get("callback")

        def sample(tokens: torch.Tensor, known: torch.Tensor, actions: torch.Tensor | None) -> torch.Tensor:
            return self._sample(tokens, known, prompt, actions, config, generator, callback)

        return sample

    # -- pixels <-> tokens --------------------------------------------------------------------------------------

    def encode(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 (H, W, 3) or (M, H, W, 3) at any size -> tokens int64 (M, h, w) on the CPU (fitted first)."""
        fitted = fit_frames(frames, (self.defaults.height, self.defaults.width))
        return self.tokenizer.encode_video(fitted)

    def decode(self, tokens: torch.Tensor) -> np.ndarray:
        """tokens int (M, h, w) -> uint8 (M, H, W, 3) numpy."""
        return self.tokenizer.decode_video(tokens).numpy()

    # -- sampling -----------------------------------------------------------------------------------------------

    def _generator(self, options: SamplingOptions) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(int(options.get("seed", 0)))

    def _config(self, options: SamplingOptions) -> wd_masking.SamplerConfig:
        unknown = set(options) - set(SamplingOptions.__annotations__)
        if unknown:
            raise TypeError(f"unknown options {sorted(unknown)}; expected some of "
                            f"{sorted(SamplingOptions.__annotations__)}")
        return self.defaults.sampler_config(**{key: value for key, value in options.items()
                                               if key not in ("num_frames", "seed", "callback")})

    def check_request(self, num_frames: int, guided: bool = True,
                      input_frames: tuple[int, int, int] | None = None, given_frames: int | None = None) -> int:
        """MemoryLimitError (a ValueError giving the estimate and the limit) when a request for `num_frames`
        frames would not fit in memory (limits.py; `memory_limit_gb` overrides the limit), even decoding one
        window at a time; -> the most windows a span may co-decode within it. `given_frames`: a rollout from
        that many leading frames (None: a video task)."""
        return widest_span(lambda windows: generation_memory(self, num_frames, guided, input_frames, given_frames,
                                                             windows), self.device, self.memory_limit_gb)

    def _model_fn(self, tokens: torch.Tensor, cond: STPTCondition) -> torch.Tensor:
        with autocast(self.device, self.dtype):
            return self.stpt(tokens, cond)

    def _sample(
        self,
        tokens: torch.Tensor,
        known: torch.Tensor,
        prompt: str,
        actions: torch.Tensor | None,
        config: wd_masking.SamplerConfig,
        generator: torch.Generator,
        callback: StepCallback | None = None,
    ) -> torch.Tensor:
        """One span: tokens/known (1, N, h, w), actions (N, A) or None -> tokens (1, N, h, w) on the device; past
        the model's window, its windows are co-decoded (wd_cli.windowing.co_decoding)."""
        text, text_mask = self.text_encoder.encode([prompt])
        cond = STPTCondition(text=text.to(self.device), text_mask=text_mask.to(self.device),
                             actions=None if actions is None else actions[None].to(self.device))
        # With neither prompt nor actions both branches are the null prompt: guidance would change nothing.
        guided = config.guidance_scale > 0 and (bool(text_mask.any()) or actions is not None)
        if not guided:
            config = dataclasses.replace(config, guidance_scale=0.0)
        model_fn = co_decoding(self._model_fn, self.defaults.num_frames, _condition_frames)
        result = wd_masking.sample(model_fn, tokens.to(self.device), known.to(self.device),
                                   mask_id=self.mask_id, cond=cond, uncond=cond.unconditional() if guided else None,
                                   config=config, generator=generator, callback=callback)
        return result.tokens

    def _length(self, options: SamplingOptions, given_frames: int) -> int:
        """Frames a rollout from `given_frames` leading frames produces: options' num_frames, else one window
        (checked to fit in memory)."""
        total = options.get("num_frames", self.defaults.num_frames)
        if total < 1:
            raise ValueError(f"num_frames must be >= 1, got {total}")
        self._check_memory(total, options, given_frames)
        return total

    def _actions(self, actions: np.ndarray | None, options: SamplingOptions) -> torch.Tensor | None:
        """actions (M, A) as a float tensor, checked against the model and against num_frames (default M)."""
        if actions is None:
            return None
        actions = torch.as_tensor(np.asarray(actions, dtype=np.float32))
        action_dim = self.stpt.config.action_dim
        if actions.ndim != 2 or actions.shape[1] != action_dim or not len(actions):
            raise ValueError(f"actions must be float (frames, {action_dim}), got shape {tuple(actions.shape)}")
        check_actions(actions, self.stpt.config.action_scale)
        if options.setdefault("num_frames", len(actions)) != len(actions):
            raise ValueError(f"num_frames={options['num_frames']} but there are {len(actions)} action rows "
                             "(one per frame)")
        return actions

    def _whole_video(self, num_frames: int, options: SamplingOptions) -> SamplingOptions:
        """options, refusing num_frames: the input video sets the length, `num_frames` output frames (checked to
        fit in memory)."""
        if "num_frames" in options:
            raise TypeError("num_frames does not apply here: the input video sets the length")
        self._check_memory(num_frames, options)
        return options

    def _check_memory(self, num_frames: int, options: SamplingOptions, given_frames: int | None = None) -> int:
        """`check_request` for `num_frames` output frames under `options`. Every task passes here, through
        `_length` (rollouts) or `_whole_video` (the rest), before it builds its tokens or samples anything, and
        `_generate` asks again for the span's windows."""
        return self.check_request(num_frames, self._config(options).guidance_scale > 0, given_frames=given_frames)

    def _continue(
        self, frames: np.ndarray, prompt: str | None, actions: torch.Tensor | None, options: SamplingOptions
    ) -> Generation:
        """frames uint8 (H, W, 3) or (k, H, W, 3) continued to num_frames frames."""
        total = self._length(options, 1 if np.ndim(frames) == 3 else len(frames))
        given = self.encode(frames)
        if len(given) > total:
            raise ValueError(f"{len(given)} given frames are more than the num_frames={total} to generate")
        tokens, known = wd_masking.image_to_video(given[None], total, self.mask_id)
        return self._generate(tokens, known, prompt or "", actions, options)

    def _generate(
        self,
        tokens: torch.Tensor,
        known: torch.Tensor,
        prompt: str,
        actions: torch.Tensor | None,
        options: SamplingOptions,
    ) -> Generation:
        """Fill the unknown tokens of a whole video (1, M, h, w), span by span (wd_cli.windowing)."""
        video = LongVideo(tokens[0], known[0], actions)
        sample = self.window_sampler(prompt, **{key: value for key, value in options.items() if key != "num_frames"})
        window = self.defaults.num_frames
        max_windows = self._check_memory(tokens.shape[1], options)  # what co-decoding may take, given the memory
        tokens = video.run(sample, window, self.defaults.context_frames, span_frames(known[0], window, max_windows))
        return self._generation(tokens, known[0])

    def _generation(self, tokens: torch.Tensor, known: torch.Tensor) -> Generation:
        tokens = tokens.cpu()
        return Generation(self.decode(tokens), tokens.numpy(), known.cpu().numpy())

    # -- files ----------------------------------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write directory/{tokenizer,stpt,text_encoder}/ + pipeline.json (format version, part classes, package
        versions, defaults, the files' checksums; see pipeline_file.py), all at once: the directory appears (or is
        replaced) only when complete."""
        with atomic_directory(directory) as staging:
            self.tokenizer.save_pretrained(staging / "tokenizer")
            self.stpt.save_pretrained(staging / "stpt")
            self.text_encoder.save_pretrained(staging / "text_encoder")
            classes = {"tokenizer": type(self.tokenizer).__name__, "stpt": type(self.stpt).__name__,
                       "text_encoder": type(unwrap(self.text_encoder)).__name__}
            # An unset optional field (None) is left out: a wd-cli from before the field still reads the file.
            defaults = {name: value for name, value in dataclasses.asdict(self.defaults).items() if value is not None}
            write_pipeline_file(staging, classes, defaults)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        memory_limit_gb: float | None = None,
    ) -> WorldDreamerPipeline:
        """Load a directory written by `save_pretrained` onto `device` (see `to`); a missing, malformed or damaged
        part, weights holding NaN/inf, parts that do not fit together, or defaults whose one window would not fit
        in memory (`memory_limit_gb`, see limits.py) raise a one-line FileNotFoundError / ValueError naming the
        file."""
        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"pipeline directory {directory} does not exist")
        for part in PARTS:
            if not (directory / part).is_dir():
                raise FileNotFoundError(f"{directory / part} is missing; a pipeline directory holds "
                                        f"{', '.join(PARTS)}")
        classes, defaults = read_pipeline_file(directory, PipelineDefaults.from_dict)
        expected = {"tokenizer": VQGAN.__name__, "stpt": STPT.__name__}
        if any(classes.get(part) != name for part, name in expected.items()):
            raise ValueError(f"{directory / PIPELINE_FILE}: 'classes' must name tokenizer {expected['tokenizer']} "
                             f"and stpt {expected['stpt']}, got {classes!r}")
        target = resolve_device(device)
        tokenizer = VQGAN.from_pretrained(directory / "tokenizer", device=target)
        stpt = STPT.from_pretrained(directory / "stpt", device=target)
        text_encoder = load_text_encoder(directory / "text_encoder", device=target)
        if classes.get("text_encoder") != type(text_encoder).__name__:
            raise ValueError(f"{directory / PIPELINE_FILE} names text encoder {classes.get('text_encoder')!r}, but "
                             f"{directory / 'text_encoder'} holds a {type(text_encoder).__name__}")
        modules = {"tokenizer": tokenizer, "stpt": stpt, "text_encoder": getattr(text_encoder, "model", None)}
        for part, module in modules.items():
            if isinstance(module, torch.nn.Module):
                check_finite_weights(module, directory / part)
        try:
            pipeline = cls(tokenizer, stpt, text_encoder, defaults)
        except ValueError as error:
            raise ValueError(f"{directory}: {error}") from None
        pipeline.memory_limit_gb = memory_limit_gb
        pipeline.to(target, dtype)
        try:
            pipeline.check_request(defaults.num_frames)
        except MemoryLimitError as error:
            raise ValueError(f"{directory / PIPELINE_FILE}: its defaults ask for too much: {error}") from None
        return pipeline


def _check_parts(tokenizer: VQGAN, stpt: STPT, text_encoder: TextEncoder, defaults: PipelineDefaults) -> None:
    """ValueError unless the parts fit: one codebook, one text width, frames that tokenize into STPT windows."""
    if stpt.config.codebook_size != tokenizer.codebook_size:
        raise ValueError(f"STPT codebook_size {stpt.config.codebook_size} != tokenizer codebook_size "
                         f"{tokenizer.codebook_size}")
    if stpt.config.text_dim != text_encoder.dim:
        raise ValueError(f"STPT text_dim {stpt.config.text_dim} != text encoder dim {text_encoder.dim}")
    f, stride = tokenizer.downsample_factor, stpt.config.patch_stride
    if defaults.height % f or defaults.width % f:
        raise ValueError(f"frame size {defaults.height}x{defaults.width} is not divisible by the tokenizer's "
                         f"factor {f}")
    if (defaults.height // f) % stride or (defaults.width // f) % stride:
        raise ValueError(f"token grid {defaults.height // f}x{defaults.width // f} is not divisible by the STPT "
                         f"patch_stride {stride}")


def _condition_frames(cond: STPTCondition, start: int, end: int) -> STPTCondition:
    """The condition of frames [start, end): actions are per frame, everything else per clip."""
    return cond if cond.actions is None else dataclasses.replace(cond, actions=cond.actions[:, start:end])
