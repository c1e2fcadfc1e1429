"""Videos longer than the model's window: spans of co-decoded windows, one routine for every task.

The network sees `window` frames at a time (the clip length it was trained at). A longer video is decoded in spans
of up to `span` frames: `SPAN_WINDOWS` windows when the task's given tokens anchor every half window (edits), one
window otherwise (rollouts; `span_frames`). Inside a span the network runs on half-overlapping windows and each
frame's log-probabilities are averaged over the windows that hold it (`co_decoding`), so one MaskGIT run decodes
the whole span: overlapping windows agree at every decoding step instead of meeting at a seam. A video longer
than a span continues span by span from left to right: each span starts with frames that are already final
(decoded by the previous span, or given by the task) as known context, and commits the frames after them. Every
frame is decoded by exactly one span, and every token the task gives comes out unchanged. Rollouts (text, image
and action to video), prediction, interpolation, inpainting, outpainting and stylization all run through
`LongVideo.run`; a live driver (one window per user input, span = window) calls `LongVideo.append` and
`LongVideo.step` instead:

    video = LongVideo(pipeline.encode(image), torch.ones(1, h, w, dtype=torch.bool), torch.zeros(1, A))
    sample = pipeline.window_sampler(prompt, seed=0)             # one window: tokens, known, actions -> tokens
    window, context = pipeline.defaults.num_frames, pipeline.defaults.context_frames
    while playing:
        video.append(window - context, actions=held_actions)    # the next frames (n, A), to generate
        while (span := video.step(sample, window, context)) is not None:   # one window per call
            show(pipeline.decode(video.tokens[span.new : span.end]))

A window generates up to `window - context` new frames, so appending that many costs one window per tick;
appending fewer makes each window lead with more context.

Where spans go (`next_window`): a span starts `context` frames before the first frame still to generate (or at
frame 0), or up to window // 2 frames before it when those are all given (a prediction's given frames); it ends
early just after the last fully given frame it reaches (interpolation's next keyframe), so a frame is never
generated blind to a frame given right after it; and it reaches further back for context rather than hold fewer
than `window` frames at the end of the video. So every network window holds `window` frames whenever the video
does, and reads the time positions the model was trained at (wd_stpt.positions).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

# One span: tokens int64 (1, L, h, w), known bool (1, L, h, w), actions float (L, A) or None -> tokens
# (1, L, h, w) with every unknown token filled and every known one unchanged (L <= the span).
WindowSampler = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
# The network: tokens int64 (B, L, h, w), condition -> logits (B, L, h, w, K), for L <= its window.
ModelFn = Callable[[torch.Tensor, Any], torch.Tensor]
# The condition of frames [start, end) of a condition for the whole span (actions are per frame).
ConditionFrames = Callable[[Any, int, int], Any]

# Windows co-decoded in one span. Co-decoding keeps log-probabilities for every frame of the span (float32,
# frames x tokens x codebook, twice with guidance), so its memory grows with the span; videos longer than this
# continue span by span.
SPAN_WINDOWS = 4


def span_frames(known: torch.Tensor, window: int, max_windows: int = SPAN_WINDOWS) -> int:
    """Frames to decode together for a video whose task gave `known` bool (T, h, w): `max_windows` windows when
    given tokens anchor every half window (inpainting, outpainting, stylization, interpolation between keyframes
    at most half a window apart), else one window. Rollouts (frames past the given ones) go window by window, each
    continuing from the last: co-decoded, their windows without a given frame followed the commanded turns less
    often (docs/benchmarks.md)."""
    longest = run = 0
    for given in known.flatten(1).any(dim=1).tolist():
        run = 0 if given else run + 1
        longest = max(longest, run)
    return span_for_gap(longest, window, max_windows)


def span_for_gap(longest_unknown: int, window: int, max_windows: int = SPAN_WINDOWS) -> int:
    """`span_frames`' rule from the longest run of frames without a given token: `max_windows` windows when it is
    at most half a window, else one window."""
    return max_windows * window if longest_unknown <= window // 2 else window


def window_starts(total: int, window: int) -> list[int]:
    """First frames of the network windows co-decoding `total` frames: every half window (at least 1 apart), the
    last ending on the last frame; [0] when the frames fit one window."""
    if total < 1 or window < 1:
        raise ValueError(f"need total >= 1 and window >= 1, got total={total}, window={window}")
    if total <= window:
        return [0]
    starts = list(range(0, total - window + 1, max(1, window // 2)))
    return starts if starts[-1] == total - window else [*starts, total - window]


def edge_weights(window: int) -> torch.Tensor:
    """float (window,): how much a window's prediction for each of its frames counts, min(i + 1, window - i):
    most in its middle, where the frame has context on both sides, least at its edges."""
    position = torch.arange(window, dtype=torch.float32)
    return torch.minimum(position + 1, window - position)


def co_decoding(model_fn: ModelFn, window: int, condition_frames: ConditionFrames) -> ModelFn:
    """`model_fn` (at most `window` frames) run over any number of frames. Up to `window` frames go straight
    through; a longer clip goes through the windows of `window_starts`, and each frame gets the log-probabilities
    of the windows holding it, averaged with `edge_weights` (a product of experts; the sampler reads logits only
    up to a constant per token, so log-probabilities serve). Each window reads the cut time table and its own
    frames' condition (`condition_frames`)."""

    def run(tokens: torch.Tensor, cond: Any) -> torch.Tensor:
        total = tokens.shape[1]
        if total <= window:
            return model_fn(tokens, cond)
        weights = edge_weights(window).to(tokens.device)
        summed = coverage = None
        for start in window_starts(total, window):
            end = start + window
            log_probs = model_fn(tokens[:, start:end], condition_frames(cond, start, end)).float().log_softmax(-1)
            if summed is None:
                summed = log_probs.new_zeros((*tokens.shape, log_probs.shape[-1]))
                coverage = weights.new_zeros(total)
            summed[:, start:end] += log_probs.mul_(weights[:, None, None, None])
            coverage[start:end] += weights
        return summed.div_(coverage[:, None, None, None])

    return run


@dataclass(frozen=True)
class Window:
    """Frames [start, end) are decoded together (one window, or a span of co-decoded windows); [start, new) are
    final context, [new, end) are committed."""

    start: int
    new: int
    end: int


def next_window(
    done: int, complete: Sequence[bool], window: int, context: int, span: int | None = None
) -> Window | None:
    """The next span of up to `span` frames (default: one window) after frames [0, done) are final; complete[i]
    is True when frame i is entirely given. None when every frame from `done` on is complete (nothing left)."""
    span = window if span is None else span
    if window < 1 or not 0 <= context < window or span < window:
        raise ValueError(f"need window >= 1, 0 <= context < window and span >= window, got window={window}, "
                         f"context={context}, span={span}")
    total = len(complete)
    first = next((frame for frame in range(done, total) if not complete[frame]), None)
    if first is None:
        return None
    given = 0  # fully given frames right before `first`: more context when they are a task's input
    while given < first and complete[first - 1 - given]:
        given += 1
    start = max(0, first - max(context, min(given, window // 2)))
    reach = min(total, start + span)
    later_given = [frame for frame in range(first + 1, reach) if complete[frame]]
    end = later_given[-1] + 1 if later_given else reach
    return Window(max(0, min(start, end - window)), first, end)


def plan_windows(complete: Sequence[bool], window: int, context: int, span: int | None = None) -> list[Window]:
    """Every span `LongVideo.run` takes over a video whose frames are `complete` as given."""
    windows, done = [], 0
    while (span_window := next_window(done, complete, window, context, span)) is not None:
        windows.append(span_window)
        done = span_window.end
    return windows


@dataclass
class LongVideo:
    """A video generated span by span: tokens int64 (T, h, w) (anything where not yet generated; filled in
    place), known bool (T, h, w) (True where the task gave the token), actions float (T, A) or None (row i
    conditions frame i); frames [0, done) are final."""

    tokens: torch.Tensor
    known: torch.Tensor
    actions: torch.Tensor | None = None
    done: int = 0

    def __post_init__(self) -> None:
        if self.tokens.ndim != 3 or self.known.shape != self.tokens.shape or self.known.dtype != torch.bool:
            raise ValueError(f"tokens must be (T, h, w) and known bool of the same shape, got "
                             f"{tuple(self.tokens.shape)} and {self.known.dtype} {tuple(self.known.shape)}")
        if self.actions is not None and (self.actions.ndim != 2 or len(self.actions) != len(self.tokens)):
            raise ValueError(f"actions must be (T={len(self.tokens)}, A), got {tuple(self.actions.shape)}")

    def append(self, frames: int, actions: torch.Tensor | None = None) -> None:
        """Add `frames` unknown frames at the end (a live driver's next frames), with their actions (frames, A)
        when the video has actions."""
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        if (actions is None) != (self.actions is None):
            raise ValueError("give actions for the new frames exactly when the video has actions")
        if actions is not None:
            actions = torch.as_tensor(actions, dtype=self.actions.dtype, device=self.actions.device)
            if actions.shape != (frames, self.actions.shape[1]):
                raise ValueError(f"actions must be ({frames}, {self.actions.shape[1]}), got {tuple(actions.shape)}")
            self.actions = torch.cat([self.actions, actions])
        height, width = self.tokens.shape[1:]
        # Any token id will do: the sampler never reads an unknown token's value.
        self.tokens = torch.cat([self.tokens, self.tokens.new_zeros((frames, height, width))])
        self.known = torch.cat([self.known, self.known.new_zeros((frames, height, width))])

    def next_window(self, window: int, context: int, span: int | None = None) -> Window | None:
        """The span `step` would generate next (None when every frame is final)."""
        complete = self.known.flatten(1).all(dim=1).tolist()
        return next_window(self.done, complete, window, context, span)

    def step(self, sample: WindowSampler, window: int, context: int, span: int | None = None) -> Window | None:
        """Generate the next span (default: one window) with `sample`; -> it, or None when every frame was final."""
        planned = self.next_window(window, context, span)
        if planned is None:
            self.done = len(self.tokens)
            return None
        known = self.known[planned.start : planned.end].clone()
        known[: planned.new - planned.start] = True  # context frames are final
        actions = None if self.actions is None else self.actions[planned.start : planned.end]
        filled = sample(self.tokens[None, planned.start : planned.end], known[None], actions)
        self.tokens[planned.new : planned.end] = filled[0, planned.new - planned.start :].to(self.tokens.device)
        self.done = planned.end
        return planned

    def run(self, sample: WindowSampler, window: int, context: int, span: int | None = None) -> torch.Tensor:
        """Generate every frame not yet final, span by span; -> tokens (T, h, w)."""
        while self.step(sample, window, context, span) is not None:
            pass
        return self.tokens
