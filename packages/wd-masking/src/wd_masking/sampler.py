"""MaskGIT parallel decoding (paper Fig. 4, eq. 6): fill the unknown tokens in a few steps.

Each step runs the network once on the current tokens, draws a token at every [MASK]
position, keeps the most confident draws and re-masks the rest, so that the number of
[MASK] tokens follows the schedule and reaches zero after the last step.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from wd_masking._ranking import lowest_k_mask
from wd_masking.conditions import concat_conditions
from wd_masking.schedules import get_schedule

ModelFn = Callable[[Tensor, Any], Tensor]
StepCallback = Callable[[int, Tensor], None]

# Bounds that keep every logit finite in float32/bfloat16: guidance and temperatures multiply or divide logits of
# magnitude ~10-100, and past these the draws stop changing anyway.
MAX_SCALE = 1e4  # guidance_scale, temperature, choice_temperature
MIN_TEMPERATURE = 1e-4  # a positive temperature below this is argmax in all but overflow: use 0
MAX_STEPS = 10_000  # decoding steps past the number of unknown tokens only repeat; the schedule table is (steps, B)


@dataclass
class SamplerConfig:
    """Decoding settings. guidance_scale is the paper's beta (0 = no guidance, one branch only)."""

    steps: int = 10
    schedule: str = "cosine"
    guidance_scale: float = 0.0
    temperature: float = 1.0  # of the token draw; 0 = argmax
    choice_temperature: float = 4.5  # Gumbel noise on confidences, scaled by 1 - (t + 1) / T
    top_k: int | None = None
    top_p: float | None = None
    # Guided decoding only: tokens whose conditional probability is below this fraction of the row's most likely
    # token's are dropped after guidance. Guidance amplifies the conditional/unconditional ratio of every token, rare
    # ones included: a token at 1% under the prompt and 0.01% without it outranks one at 90% against 99%. The
    # plausibility constraint of contrastive decoding (Li et al., 2023); None = the paper's plain guidance.
    plausibility: float | None = None

    def __post_init__(self) -> None:
        get_schedule(self.schedule)
        if not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps must be in [1, {MAX_STEPS}], got {self.steps}")
        for name in ("guidance_scale", "temperature", "choice_temperature"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value <= MAX_SCALE):
                raise ValueError(f"{name} must be a finite number in [0, {MAX_SCALE:g}], got {value}")
        if 0 < self.temperature < MIN_TEMPERATURE:
            raise ValueError(f"temperature must be 0 (argmax) or >= {MIN_TEMPERATURE:g}, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {self.top_k}")
        if self.top_p is not None and not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p}")
        if self.plausibility is not None and not (math.isfinite(self.plausibility) and 0 < self.plausibility <= 1):
            raise ValueError(f"plausibility must be in (0, 1] or None, got {self.plausibility}")


class SampleResult(NamedTuple):
    """tokens int64 (B, N, h, w) with no [MASK]; snapshots: the tokens after each step, if asked."""

    tokens: Tensor
    snapshots: list[Tensor] | None


def unknown_counts(initial_unknown: Tensor, steps: int, schedule: str = "cosine") -> Tensor:
    """int64 (steps, B): [MASK] tokens left after each step, from int (B,) unknown at the start.

    round(schedule((t + 1) / T) * initial), lowered where needed so that each step decodes at
    least one token while any remain (MaskGIT's rule); 0 after the last step.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    ratios = torch.arange(1, steps + 1, dtype=torch.float64, device=initial_unknown.device) / steps
    planned = (get_schedule(schedule)(ratios)[:, None] * initial_unknown[None, :]).round().long()
    planned[-1] = 0
    # counts[t] = min(planned[t], counts[t-1] - 1) unrolls to a running minimum of planned[s] + s.
    step = torch.arange(steps, device=initial_unknown.device)[:, None]
    counts = torch.cummin(planned + step, dim=0).values - step
    return torch.minimum(counts, initial_unknown[None, :] - step - 1).clamp(min=0)


def _validate(tokens: Tensor, known: Tensor, mask_id: int) -> None:
    if tokens.dim() != 4 or tokens.dtype != torch.int64:
        raise ValueError(f"tokens must be int64 (B, N, h, w), got {tokens.dtype} {tuple(tokens.shape)}")
    if known.dtype != torch.bool or known.shape != tokens.shape:
        raise ValueError(
            f"known must be bool with the tokens' shape {tuple(tokens.shape)}, "
            f"got {known.dtype} {tuple(known.shape)}"
        )
    if mask_id < 1:
        raise ValueError(f"mask_id (= codebook size) must be >= 1, got {mask_id}")
    if (known & ((tokens < 0) | (tokens >= mask_id))).any():
        raise ValueError(f"known tokens must be real codes in [0, {mask_id}), not [MASK] or out of range")


# exp of anything lower is a float32 subnormal, which CPUs compute 10-30x slower; such a
# token's weight is also far below the float32 resolution of the row's total.
_LOWEST_EXPONENT = -87.0


def _shifted_exp(logits: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
    """exp(logits - row max) written into out (M, K), and the row max (M, 1)."""
    peak = logits.amax(dim=-1, keepdim=True)
    return torch.sub(logits, peak, out=out).clamp_(min=_LOWEST_EXPONENT).exp_(), peak


def _dropped(logits: Tensor, top_k: int | None, top_p: float | None) -> Tensor | None:
    """bool (M, K): tokens outside the top-k and the top-p nucleus of each row; None if no filter."""
    drop = None
    if top_k is not None and top_k < logits.shape[-1]:
        drop = logits < logits.topk(top_k, dim=-1).values[:, -1:]
    if top_p is not None and top_p < 1:
        kept_logits = logits if drop is None else logits.masked_fill(drop, float("-inf"))
        sorted_logits, order = kept_logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Drop a token when the ones more likely than it already reach top_p; the first stays.
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop_p = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        drop = drop_p if drop is None else drop | drop_p
    return drop


def _draw_(
    logits: Tensor, scratch: Tensor, config: SamplerConfig, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """One token per row of (M, K) float32 logits and its log-probability under softmax(logits).

    The confidence uses the plain distribution whatever the temperature and filters, as MaskGIT
    does. Overwrites logits and scratch (M, K): at this size every extra pass or fresh
    allocation shows in the step time.
    """
    plain = config.temperature == 1 and config.top_k is None and config.top_p is None
    log_normalizer = None
    if not plain:
        weights, peak = _shifted_exp(logits, scratch)
        log_normalizer = _finite(peak.squeeze(1) + weights.sum(dim=-1).log())
    if config.temperature == 0:
        drawn = logits.argmax(dim=-1)
        return drawn, logits.gather(1, drawn[:, None]).squeeze(1) - log_normalizer
    if config.temperature != 1:
        logits.div_(config.temperature)
    drop = _dropped(logits, config.top_k, config.top_p)
    weights, peak = _shifted_exp(logits, scratch)
    if drop is not None:
        weights.masked_fill_(drop, 0.0)
    # Inverse-CDF draw, one uniform per row (torch.multinomial is ~10x slower on CPU at K = 8192):
    # the first token whose cumulative weight reaches a threshold in (0, total] has weight > 0.
    cdf = weights.cumsum_(dim=-1)
    total = cdf[:, -1:].contiguous()
    _finite(peak + total.log())  # the tempered, filtered distribution
    uniform = torch.rand(total.shape, generator=generator, device=total.device, dtype=total.dtype)
    drawn = torch.searchsorted(cdf, (1 - uniform) * total).squeeze(1)
    if log_normalizer is None:
        log_normalizer = (peak + total.log()).squeeze(1)
    return drawn, logits.gather(1, drawn[:, None]).squeeze(1) * config.temperature - log_normalizer


def _finite(values: Tensor) -> Tensor:
    """`values` (per-row normalizers); ValueError when one is NaN or inf: the network gave non-finite logits, and
    a draw from them would be an out-of-range id or silently arbitrary."""
    bad = int((~torch.isfinite(values)).sum())
    if bad:
        raise ValueError(f"the network's logits are not finite (NaN or inf) at {bad} of {values.numel()} tokens: its "
                         "weights hold NaN/inf, or the inputs (guidance, temperature, actions) overflow")
    return values


def _guide_(conditional: Tensor, unconditional: Tensor, guidance_scale: float) -> Tensor:
    """Paper eq. 6, g = (1 + beta) c - beta u, written into conditional."""
    return conditional.lerp_(unconditional, -guidance_scale)


def _unknown_logits(
    logits: Tensor, rows: Tensor, scratch: Tensor, guidance_scale: float, plausibility: float | None = None
) -> Tensor:
    """(M, K) float32 logits of the unknown rows (guided when scale > 0), gathered into scratch[0]; with
    `plausibility`, guided logits of tokens the conditional branch finds implausible are -inf."""
    flat = logits.float().reshape(-1, logits.shape[-1])
    selected = torch.index_select(flat, 0, rows, out=scratch[0, : rows.numel()])
    if guidance_scale == 0:
        return selected
    implausible = None
    if plausibility is not None:
        implausible = selected < selected.amax(dim=-1, keepdim=True) + math.log(plausibility)
    unconditional_rows = rows + flat.shape[0] // 2
    unconditional = torch.index_select(flat, 0, unconditional_rows, out=scratch[1, : rows.numel()])
    guided = _guide_(selected, unconditional, guidance_scale)
    return guided if implausible is None else guided.masked_fill_(implausible, float("-inf"))


def _decode_step(
    current: Tensor,
    logits: Tensor,
    num_left: Tensor,
    progress: float,
    config: SamplerConfig,
    scratch: Tensor,
    generator: torch.Generator | None,
) -> Tensor:
    """Draw every [MASK] of current (B, N, h, w), then re-mask the num_left (B,) least confident."""
    mask_id = logits.shape[-1]
    unknown = current.flatten() == mask_id
    rows = unknown.nonzero().squeeze(1)
    selected = _unknown_logits(logits, rows, scratch, config.guidance_scale, config.plausibility)
    drawn, confidence_drawn = _draw_(selected, scratch[1, : rows.numel()], config, generator)
    # Gumbel noise fading with the schedule's progress, as in MaskGIT's code: early steps
    # explore, late ones keep the likeliest, and the last step (which keeps all) gets none.
    noise_scale = config.choice_temperature * (1 - progress)
    if noise_scale > 0:
        gumbel = -torch.empty_like(confidence_drawn).exponential_(generator=generator).log_()
        confidence_drawn = confidence_drawn + noise_scale * gumbel
    confidence = torch.full(unknown.shape, float("inf"), device=current.device, dtype=confidence_drawn.dtype)
    confidence[rows] = confidence_drawn
    proposal = current.flatten().index_put((rows,), drawn).view_as(current)
    remask = lowest_k_mask(confidence.view(current.shape[0], -1), num_left).view_as(current)
    return proposal.masked_fill(remask, mask_id)


@torch.no_grad()
def sample(
    model_fn: ModelFn,
    tokens: Tensor,
    known: Tensor,
    *,
    mask_id: int,
    cond: Any = None,
    uncond: Any = None,
    config: SamplerConfig | None = None,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    return_snapshots: bool = False,
) -> SampleResult:
    """Fill every position where `known` is False; known tokens are returned unchanged.

    tokens int64 (B, N, h, w) (values at unknown positions are ignored), known bool (B, N, h, w),
    mask_id = the network's codebook size K; model_fn(tokens, cond) -> logits (B, N, h, w, K).
    With guidance_scale > 0, `uncond` is required (None when cond is None: both branches are then
    the null prompt) and model_fn gets the batch of both branches, conditions merged by
    concat_conditions. callback(step, tokens) runs after every step. The
    network runs once per step, except at steps where no [MASK] is left in the whole batch
    (everything known, or more steps than unknown tokens): those skip it.
    """
    config = config or SamplerConfig()
    _validate(tokens, known, mask_id)
    if config.guidance_scale > 0:
        if uncond is None and cond is not None:
            raise ValueError("guidance_scale > 0 needs uncond, the unconditional twin of cond")
        cond = concat_conditions(cond, uncond)
    initial_unknown = (~known).flatten(1).sum(dim=1)
    counts = unknown_counts(initial_unknown, config.steps, config.schedule)
    current = tokens.masked_fill(~known, mask_id)
    snapshots: list[Tensor] | None = [] if return_snapshots else None
    model_batch = current.shape[0] * (2 if config.guidance_scale > 0 else 1)
    expected = (model_batch, *current.shape[1:], mask_id)
    # Reused every step (M only shrinks): fresh (M, K) allocations cost page faults worth passes.
    scratch = torch.empty(
        2, int(initial_unknown.sum()), mask_id, device=current.device, dtype=torch.float32
    )
    # [MASK] tokens in the batch before each step; a step with none has nothing to decode.
    left_before = torch.cat([initial_unknown[None], counts[:-1]]).sum(dim=1).tolist()
    for step in range(config.steps):
        if left_before[step] > 0:
            logits = model_fn(current.repeat(2, 1, 1, 1) if config.guidance_scale > 0 else current, cond)
            if tuple(logits.shape) != expected:
                raise ValueError(f"model_fn returned logits {tuple(logits.shape)}, expected {expected}")
            progress = (step + 1) / config.steps
            current = _decode_step(current, logits, counts[step], progress, config, scratch, generator)
        if snapshots is not None:
            snapshots.append(current.clone())
        if callback is not None:
            callback(step, current)
    return SampleResult(current, snapshots)
