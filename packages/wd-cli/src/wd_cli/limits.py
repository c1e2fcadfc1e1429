"""Memory of a generation request, estimated before it runs, against the memory there is.

The estimate counts what grows with the request: one span's logits and sampler buffers (span frames x tokens per
frame x codebook, twice with guidance, and co-decoding's sums and one window's log-probabilities; a rollout from
`given_frames` leading frames gets the span its gap gets, a video task the longest span that fits), the STPT's
activations for one window, the VQGAN's decoder activations per chunk of frames, and the frames and tokens of the
whole output (and of an input video). Weights already loaded are not counted. The limit is the memory available
now (RAM, within a cgroup limit; free CUDA memory for the device part) unless `WD_MEMORY_LIMIT_GB`,
`--memory-limit` or `memory_limit_gb` gives one.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from wd_cli.windowing import SPAN_WINDOWS, span_for_gap

if TYPE_CHECKING:
    from wd_cli.pipeline import WorldDreamerPipeline

GIB = 1024**3
ENV_LIMIT = "WD_MEMORY_LIMIT_GB"
SAFETY = 1.25  # allocator slack and the copies the estimate leaves out
DECODE_CHUNK = 16  # frames the VQGAN decodes at once (VQGAN.decode_video's chunk_size)


class MemoryLimitError(ValueError):
    """A request would need more memory than the limit; the message gives the estimate and the limit."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a request needs: `host` in RAM, `device` where the models run (RAM too on a CPU)."""

    host: int
    device: int
    what: str  # the request, in words


def generation_memory(pipeline: WorldDreamerPipeline, num_frames: int, guided: bool = True,
                      input_frames: tuple[int, int, int] | None = None,
                      given_frames: int | None = None, span_windows: int = SPAN_WINDOWS) -> MemoryEstimate:
    """Estimate a request for `num_frames` output frames; `input_frames` = (count, height, width) of an input
    video (inpaint, stylize), read whole before it is fitted to the model's size. `given_frames`: a rollout from
    that many leading frames (0 for text-to-video), decoded in the spans `span_for_gap` gives its gap; None: a
    task whose given tokens the estimate cannot see yet, counted at a span of `span_windows` windows."""
    defaults, config = pipeline.defaults, pipeline.stpt.config
    height, width, factor = defaults.height, defaults.width, pipeline.tokenizer.downsample_factor
    frame_tokens = (height // factor) * (width // factor)
    window = min(defaults.num_frames, num_frames) * frame_tokens
    longest = span_windows * defaults.num_frames
    if given_frames is not None:
        longest = span_for_gap(max(0, num_frames - given_frames), defaults.num_frames, span_windows)
    span_frames = min(longest, num_frames)
    span = span_frames * frame_tokens
    batch = 2 if guided else 1
    # float32 logits + the sampler's two scratch rows; co-decoding (a span past one window) adds its running sums
    # and one window's log-probabilities.
    co_decoded = 0 if span == window else batch * (span + window)
    logits = 4 * config.codebook_size * (span * (batch + 2) + co_decoded)
    hidden = int(config.width * config.mlp_ratio)
    activations = 4 * batch * window * (4 * config.width + hidden + config.depth // 2 * config.width)
    tokenizer = pipeline.tokenizer.config
    widths = [tokenizer.hidden_channels * mult for mult in tokenizer.channel_mult]
    level = max(channels * height * width // 4**index for index, channels in enumerate(widths))
    decoder = 4 * 3 * min(DECODE_CHUNK, num_frames) * level
    output = num_frames * (3 * 8 * frame_tokens + 2 * 3 * height * width)  # tokens, known, copies; frames twice
    count, in_height, in_width = input_frames or (0, 0, 0)
    inputs = count * 3 * (2 * in_height * in_width + height * width)
    device = int(SAFETY * (logits + activations + decoder))
    what = (f"{num_frames} frames of {height}x{width}, {span_frames}-frame spans of "
            f"{min(defaults.num_frames, num_frames)}-frame windows of "
            f"{frame_tokens} tokens per frame, codebook {config.codebook_size}"
            + (", guided (batch 2)" if guided else "") + (f", a {count}-frame input video" if count else ""))
    return MemoryEstimate(int(SAFETY * (output + inputs)), device, what)


def memory_limit(device: torch.device, limit_gb: float | None = None) -> tuple[int, int]:
    """(host, device) bytes a request may use: `limit_gb` or WD_MEMORY_LIMIT_GB for both, else what is available
    now. On a CPU the two are one pool (the host figure)."""
    if limit_gb is None and os.environ.get(ENV_LIMIT):
        try:
            limit_gb = float(os.environ[ENV_LIMIT])
        except ValueError:
            raise ValueError(f"{ENV_LIMIT} must be a number of GiB, got {os.environ[ENV_LIMIT]!r}") from None
    if limit_gb is not None:
        return int(limit_gb * GIB), int(limit_gb * GIB)
    host = available_ram()
    if device.type != "cuda":
        return host, host
    free, _ = torch.cuda.mem_get_info(device)
    return host, free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def available_ram() -> int:
    """Bytes of RAM available now: /proc/meminfo's MemAvailable, lowered to what a cgroup (v2) limit leaves."""
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        fields = dict(line.split(":", 1) for line in meminfo.read_text().splitlines() if ":" in line)
        if "MemAvailable" in fields:
            available = int(fields["MemAvailable"].split()[0]) * 1024
    cgroup = Path("/sys/fs/cgroup")
    try:
        limit = (cgroup / "memory.max").read_text().strip()
        if limit != "max":
            available = min(available, int(limit) - int((cgroup / "memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return available


def check_memory(estimate: MemoryEstimate, device: torch.device, limit_gb: float | None = None) -> None:
    """MemoryLimitError with the estimate and the limit when the request does not fit."""
    problem = _overflow(estimate, device, limit_gb)
    if problem is not None:
        raise MemoryLimitError(problem)


def widest_span(estimate: Callable[[int], MemoryEstimate], device: torch.device,
                limit_gb: float | None = None) -> int:
    """The most windows, from SPAN_WINDOWS down to 1, that a span may co-decode within the limit, given
    `estimate(windows)`; MemoryLimitError (one window's estimate) when not even one window fits. Co-decoding's
    log-probabilities grow with the span, so a long edit that does not fit four windows at once decodes fewer
    together rather than being refused."""
    for windows in range(SPAN_WINDOWS, 1, -1):
        if _overflow(estimate(windows), device, limit_gb) is None:
            return windows
    check_memory(estimate(1), device, limit_gb)
    return 1


def _overflow(estimate: MemoryEstimate, device: torch.device, limit_gb: float | None) -> str | None:
    """Why `estimate` does not fit under the limit, in one line; None when it fits."""
    host_limit, device_limit = memory_limit(device, limit_gb)
    needs = [(estimate.host + estimate.device, host_limit, "memory")] if device.type != "cuda" else [
        (estimate.host, host_limit, "CPU memory"), (estimate.device, device_limit, f"{device} memory")]
    for need, limit, kind in needs:
        if need > limit:
            return (f"this request needs about {_size(need)} of {kind} ({estimate.what}), over the limit of "
                    f"{_size(limit)}; ask for fewer frames or a smaller size, or set the limit (--memory-limit, "
                    f"{ENV_LIMIT}, memory_limit_gb)")
    return None


def _size(count: int) -> str:
    return f"{count / GIB:.1f} GiB" if count >= GIB / 10 else f"{count / 1024**2:.1f} MiB"
