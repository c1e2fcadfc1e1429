import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wd_masking import (
    SCHEDULES,
    SamplerConfig,
    image_to_video,
    inpainting,
    sample,
    sample_training_mask,
    unknown_counts,
)

FAST = settings(max_examples=25, deadline=None)


def _problem(seed: int, shape: tuple[int, int, int, int], codebook_size: int, known_fraction: float):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, codebook_size, shape, generator=generator)
    known = torch.rand(shape, generator=generator) < known_fraction
    return tokens, known


@FAST
@given(
    seed=st.integers(0, 10_000),
    shape=st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 5), st.integers(1, 5)),
    codebook_size=st.integers(2, 9),
    steps=st.integers(1, 12),
    schedule=st.sampled_from(sorted(SCHEDULES)),
    guidance_scale=st.sampled_from([0.0, 2.5]),
    known_fraction=st.floats(0.0, 1.0),
)
def test_sampler_invariants(
    random_model, seed, shape, codebook_size, steps, schedule, guidance_scale, known_fraction
):
    tokens, known = _problem(seed, shape, codebook_size, known_fraction)
    model = random_model(codebook_size, seed)
    config = SamplerConfig(steps=steps, schedule=schedule, guidance_scale=guidance_scale)
    uncond = torch.zeros(shape[0]) if guidance_scale > 0 else None
    result = sample(
        model, tokens, known, mask_id=codebook_size, cond=torch.ones(shape[0]), uncond=uncond,
        config=config, generator=torch.Generator().manual_seed(seed), return_snapshots=True,
    )
    assert result.tokens.shape == tokens.shape and result.tokens.dtype == torch.int64
    assert torch.equal(result.tokens[known], tokens[known])
    assert not (result.tokens == codebook_size).any()
    initial = (~known).flatten(1).sum(1)
    counts = unknown_counts(initial, steps, schedule)
    # The network runs at every step that starts with a [MASK] somewhere in the batch, which is
    # every step as soon as one sample has at least `steps` unknown tokens.
    busy_steps = int((torch.cat([initial[None], counts[:-1]]).sum(1) > 0).sum())
    assert len(model.batch_sizes) == busy_steps
    if initial.max() >= steps:
        assert busy_steps == steps
    assert set(model.batch_sizes) <= {shape[0] * (2 if guidance_scale > 0 else 1)}
    for seen in model.tokens:
        assert torch.equal(seen[: shape[0]][known], tokens[known])
    left = torch.stack([(snapshot == codebook_size).flatten(1).sum(1) for snapshot in result.snapshots])
    assert torch.equal(left, counts)
    assert (left[1:] <= left[:-1]).all()
    for before, after in zip(result.snapshots, result.snapshots[1:], strict=False):
        decoded = before != codebook_size
        assert torch.equal(after[decoded], before[decoded])


@settings(max_examples=60, deadline=None)
@given(
    initial=st.integers(0, 5000),
    steps=st.integers(1, 20),
    schedule=st.sampled_from(sorted(SCHEDULES)),
)
def test_unknown_counts_follow_the_schedule(initial, steps, schedule):
    counts = unknown_counts(torch.tensor([initial]), steps, schedule)[:, 0].tolist()
    fraction = SCHEDULES[schedule]
    planned = [round(float(fraction(torch.tensor((t + 1) / steps, dtype=torch.float64))) * initial)
               for t in range(steps)]
    planned[-1] = 0
    assert counts[-1] == 0
    previous = initial
    for count, plan in zip(counts, planned, strict=True):
        # Follow the schedule, except to decode at least one token per step while any remain.
        assert count == (max(0, previous - 1) if plan >= previous else plan)
        previous = count


def test_unknown_counts_match_cosine_for_a_large_video():
    counts = unknown_counts(torch.tensor([5760]), 10)[:, 0].tolist()
    assert counts == [round(math.cos(math.pi / 2 * (t + 1) / 10) * 5760) for t in range(9)] + [0]


def test_guidance_zero_never_evaluates_the_unconditional_branch(table_model):
    logits = torch.randn(2, 3, 4, 4, 6)
    model = table_model(logits, torch.full_like(logits, float("nan")))
    tokens, known = _problem(0, (2, 3, 4, 4), 6, 0.3)
    sample(model, tokens, known, mask_id=6, cond=torch.ones(2), uncond=torch.zeros(2),
           config=SamplerConfig(steps=5))
    assert len(model.flags) == 5
    assert all(torch.equal(flags, torch.ones(2)) for flags in model.flags)


@pytest.mark.parametrize("guidance_scale", [0.5, 3.0])
def test_guided_argmax_follows_equation_6(table_model, guidance_scale):
    generator = torch.Generator().manual_seed(1)
    conditional = torch.randn(2, 2, 3, 3, 5, generator=generator)
    unconditional = torch.randn(2, 2, 3, 3, 5, generator=generator)
    model = table_model(conditional, unconditional)
    tokens, known = _problem(1, (2, 2, 3, 3), 5, 0.0)
    config = SamplerConfig(steps=4, guidance_scale=guidance_scale, temperature=0.0, choice_temperature=0.0)
    result = sample(model, tokens, known, mask_id=5, cond=torch.ones(2), uncond=torch.zeros(2), config=config)
    guided = (1 + guidance_scale) * conditional - guidance_scale * unconditional
    assert torch.equal(result.tokens, guided.argmax(-1))
    assert not torch.equal(guided.argmax(-1), conditional.argmax(-1))
    assert all(torch.equal(flags, torch.tensor([1.0, 1.0, 0.0, 0.0])) for flags in model.flags)


@pytest.mark.parametrize(("temperature", "top_k"), [(1.0, None), (0.5, None), (2.0, 2)])
def test_guided_draws_follow_the_softmax_of_equation_6(table_model, temperature, top_k):
    conditional = torch.tensor([1.0, 0.5, -1.0]).expand(1, 1, 100, 100, 3)
    unconditional = torch.tensor([1.5, -0.5, 0.0]).expand(1, 1, 100, 100, 3)
    beta = 1.5
    model = table_model(conditional, unconditional)
    tokens, known = _problem(2, (1, 1, 100, 100), 3, 0.0)
    config = SamplerConfig(steps=1, guidance_scale=beta, temperature=temperature, top_k=top_k)
    result = sample(model, tokens, known, mask_id=3, cond=torch.ones(1), uncond=torch.zeros(1),
                    config=config, generator=torch.Generator().manual_seed(0))
    guided = (1 + beta) * conditional[0, 0, 0, 0] - beta * unconditional[0, 0, 0, 0]  # [0.25, 2, -2.5]
    if top_k is not None:
        guided[2] = float("-inf")
    expected = (guided / temperature).softmax(-1)
    frequencies = torch.bincount(result.tokens.flatten(), minlength=3) / result.tokens.numel()
    assert torch.allclose(frequencies, expected, atol=0.02)


@pytest.mark.parametrize("plausibility", [None, 0.05, 0.5])
def test_plausibility_drops_tokens_the_prompt_finds_unlikely_after_guidance(table_model, plausibility):
    # Under the prompt: 0.80 / 0.01 / 0.19; without it: 0.99 / 0.0001 / ~0.01. Guidance 2 favours the rare token 1.
    conditional = torch.tensor([0.80, 0.01, 0.19]).log().expand(1, 1, 100, 100, 3)
    unconditional = torch.tensor([0.99, 0.0001, 0.0099]).log().expand(1, 1, 100, 100, 3)
    model = table_model(conditional, unconditional)
    tokens, known = _problem(3, (1, 1, 100, 100), 3, 0.0)
    config = SamplerConfig(steps=1, guidance_scale=2.0, plausibility=plausibility)
    result = sample(model, tokens, known, mask_id=3, cond=torch.ones(1), uncond=torch.zeros(1), config=config,
                    generator=torch.Generator().manual_seed(0))
    guided = 3 * conditional[0, 0, 0, 0] - 2 * unconditional[0, 0, 0, 0]
    kept = conditional[0, 0, 0, 0].softmax(-1) >= (plausibility or 0) * 0.80
    expected = guided.masked_fill(~kept, float("-inf")).softmax(-1)
    frequencies = torch.bincount(result.tokens.flatten(), minlength=3) / result.tokens.numel()
    assert torch.allclose(frequencies, expected, atol=0.02)
    assert (expected.argmax() == 1) == (plausibility is None)  # plain guidance picks the rare token most often


def test_plausibility_out_of_range_is_refused():
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="plausibility"):
            SamplerConfig(plausibility=bad)


@FAST
@given(
    seed=st.integers(0, 10_000),
    shape=st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 4), st.integers(1, 4)),
    steps=st.integers(1, 10),
    temperature=st.floats(0.3, 3.0),
    top_k=st.one_of(st.none(), st.integers(1, 8)),
    top_p=st.one_of(st.none(), st.floats(0.05, 1.0)),
    guidance_scale=st.sampled_from([0.0, 1.0]),
)
def test_a_certain_model_is_reproduced_exactly(
    table_model, seed, shape, steps, temperature, top_k, top_p, guidance_scale
):
    codebook_size = 8
    targets, known = _problem(seed, shape, codebook_size, 0.0)
    logits = torch.full((*shape, codebook_size), -1e9).scatter(-1, targets[..., None], 0.0)
    model = table_model(logits)
    config = SamplerConfig(steps=steps, temperature=temperature, top_k=top_k, top_p=top_p,
                           guidance_scale=guidance_scale)
    result = sample(
        model, torch.zeros_like(targets), known, mask_id=codebook_size, cond=torch.ones(shape[0]),
        uncond=torch.zeros(shape[0]), config=config, generator=torch.Generator().manual_seed(seed),
    )
    assert torch.equal(result.tokens, targets)


@pytest.mark.parametrize("choice_temperature", [0.0, 1e-4])
def test_the_most_confident_positions_are_decoded_first(table_model, choice_temperature):
    # Confidence gaps of >= 0.01 between positions, far above noise of scale 1e-4.
    peak = torch.randperm(40, generator=torch.Generator().manual_seed(3)).float().view(1, 1, 5, 8) / 40
    logits = torch.zeros(1, 1, 5, 8, 6)
    logits[..., 2] = peak
    tokens, known = _problem(3, (1, 1, 5, 8), 6, 0.0)
    config = SamplerConfig(steps=3, temperature=0.0, choice_temperature=choice_temperature)
    result = sample(table_model(logits), tokens, known, mask_id=6, config=config, return_snapshots=True)
    decoded = result.snapshots[0] != 6
    kept = 40 - unknown_counts(torch.tensor([40]), 3)[0, 0]
    assert torch.equal(decoded, peak >= peak.flatten().topk(int(kept)).values[-1])
    assert (result.snapshots[0][decoded] == 2).all()


def test_top_k_one_and_tiny_top_p_take_the_argmax(random_model):
    tokens, known = _problem(4, (2, 2, 3, 3), 7, 0.2)
    for config in (SamplerConfig(steps=3, top_k=1), SamplerConfig(steps=3, top_p=1e-6)):
        model = random_model(7, seed=5)
        result = sample(model, tokens, known, mask_id=7, config=config, return_snapshots=True)
        replay = random_model(7, seed=5)
        for step, seen in enumerate(model.tokens):
            logits = replay(seen, None)
            newly = (seen == 7) & (result.snapshots[step] != 7)
            assert newly.any()
            assert torch.equal(result.snapshots[step][newly], logits.argmax(-1)[newly])


def test_same_seed_same_tokens_different_seed_different_tokens(random_model):
    tokens, known = _problem(5, (1, 4, 8, 8), 16, 0.1)

    def run(seed: int):
        generator = torch.Generator().manual_seed(seed)
        return sample(random_model(16, seed=0), tokens, known, mask_id=16, generator=generator).tokens

    assert torch.equal(run(0), run(0))
    assert not torch.equal(run(0), run(1))


def test_callback_sees_every_step(random_model):
    tokens, known = image_to_video(torch.randint(0, 9, (1, 1, 4, 4)), 3, 9)
    seen: list[tuple[int, int]] = []
    sample(random_model(9), tokens, known, mask_id=9, config=SamplerConfig(steps=4),
           callback=lambda step, current: seen.append((step, int((current == 9).sum()))))
    assert [step for step, _ in seen] == [0, 1, 2, 3]
    assert [left for _, left in seen] == unknown_counts(torch.tensor([32]), 4)[:, 0].tolist()


def test_invalid_inputs_are_refused(random_model):
    tokens, known = _problem(6, (1, 2, 3, 3), 5, 0.5)
    with pytest.raises(ValueError, match="needs uncond"):
        sample(random_model(5), tokens, known, mask_id=5, cond=torch.ones(1),
               config=SamplerConfig(guidance_scale=1.0))
    with pytest.raises(ValueError, match="known tokens"):
        sample(random_model(5), tokens.masked_fill(known, 5), known, mask_id=5)
    with pytest.raises(ValueError, match="known must be bool"):
        sample(random_model(5), tokens, known[0], mask_id=5)
    with pytest.raises(ValueError, match="tokens must be int64"):
        sample(random_model(5), tokens.int(), known, mask_id=5)
    with pytest.raises(ValueError, match="model_fn returned logits"):
        sample(random_model(4), tokens, known, mask_id=5)
    for bad in ({"steps": 0}, {"schedule": "exp"}, {"temperature": -1.0}, {"top_k": 0}, {"top_p": 0.0}):
        with pytest.raises(ValueError):
            SamplerConfig(**bad)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sampler_and_masks_run_on_cuda():
    generator = torch.Generator(device="cuda").manual_seed(0)
    mask = sample_training_mask(4, 3, 4, 4, generator=generator, device="cuda")
    assert mask.is_cuda and mask.shape == (4, 3, 4, 4) and mask.flatten(1).any(1).all()
    tokens, known = image_to_video(torch.randint(0, 32, (2, 1, 4, 4), device="cuda"), 3, 32)

    def model_fn(batch, cond):
        return torch.randn(*batch.shape, 32, device="cuda", generator=generator)

    config = SamplerConfig(steps=5, guidance_scale=2.0, top_k=8)
    result = sample(model_fn, tokens, known, mask_id=32, cond=torch.ones(2, device="cuda"),
                    uncond=torch.zeros(2, device="cuda"), config=config, generator=generator)
    assert result.tokens.is_cuda and not (result.tokens == 32).any()
    assert torch.equal(result.tokens[:, 0], tokens[:, 0])


def test_nothing_unknown_returns_the_tokens_without_running_the_network(random_model):
    tokens = torch.randint(0, 5, (2, 2, 3, 3), generator=torch.Generator().manual_seed(7))
    model, steps_seen = random_model(5), []
    result = sample(model, tokens, torch.ones_like(tokens, dtype=torch.bool), mask_id=5,
                    config=SamplerConfig(steps=4), return_snapshots=True,
                    callback=lambda step, current: steps_seen.append(step))
    assert model.batch_sizes == [] and steps_seen == [0, 1, 2, 3]
    assert torch.equal(result.tokens, tokens) and all(torch.equal(s, tokens) for s in result.snapshots)


def test_each_sample_follows_its_own_schedule_with_more_steps_than_tokens(random_model):
    # Inpainting regions of 1, 4 and 20 tokens in one batch, decoded in 10 steps.
    region = torch.zeros(3, 2, 4, 4, dtype=torch.bool)
    region[0, 0, 0, 0] = True
    region[1, 1, :2, :2] = True
    region[2, :, :, :2] = True
    region[2, 0, :, 2] = True
    video = torch.randint(0, 6, (3, 2, 4, 4), generator=torch.Generator().manual_seed(8))
    tokens, known = inpainting(video, region, mask_id=6)
    model = random_model(6)
    result = sample(model, tokens, known, mask_id=6, config=SamplerConfig(steps=10),
                    generator=torch.Generator().manual_seed(0), return_snapshots=True)
    left = torch.stack([(snapshot == 6).flatten(1).sum(1) for snapshot in result.snapshots]).T.tolist()
    assert left[0] == [0] * 10
    assert left[1] == [3, 2, 1] + [0] * 7  # cosine: round(cos(pi/20 (t+1)) 4) = 4, 4, 4, 3, ... lowered
    assert left[2] == unknown_counts(torch.tensor([20]), 10)[:, 0].tolist()
    assert len(model.batch_sizes) == 10
    assert torch.equal(result.tokens[known], video[known]) and not (result.tokens == 6).any()


def test_a_large_batch_decodes_each_sample_as_if_alone(table_model):
    generator = torch.Generator().manual_seed(9)
    shape = (16, 2, 3, 4)
    logits = torch.randn(*shape, 7, generator=generator)
    known = torch.rand(shape, generator=generator) < torch.linspace(0, 1, 16).view(16, 1, 1, 1)
    tokens = torch.randint(0, 7, shape, generator=generator)
    config = SamplerConfig(steps=5, temperature=0.0, choice_temperature=0.0)
    batch = sample(table_model(logits), tokens, known, mask_id=7, config=config, return_snapshots=True)
    for index in range(16):
        alone = sample(table_model(logits[index : index + 1]), tokens[index : index + 1],
                       known[index : index + 1], mask_id=7, config=config, return_snapshots=True)
        for together, single in zip(batch.snapshots, alone.snapshots, strict=True):
            assert torch.equal(together[index : index + 1], single)


@dataclass
class Flags:
    """A condition object with concat(), standing in for wd_stpt.STPTCondition."""

    flags: torch.Tensor

    def concat(self, other: "Flags") -> "Flags":
        return Flags(torch.cat([self.flags, other.flags]))


def test_guidance_batches_a_condition_object_into_one_call(table_model):
    generator = torch.Generator().manual_seed(10)
    conditional, unconditional = torch.randn(2, 1, 2, 2, 3, 5, generator=generator).unbind(0)
    table = table_model(conditional.expand(2, -1, -1, -1, -1), unconditional.expand(2, -1, -1, -1, -1))
    seen: list[Flags] = []

    def model_fn(tokens, cond):
        seen.append(cond)
        return table(tokens, cond.flags)

    tokens, known = _problem(10, (2, 2, 2, 3), 5, 0.0)
    config = SamplerConfig(steps=3, guidance_scale=2.0, temperature=0.0, choice_temperature=0.0)
    result = sample(model_fn, tokens, known, mask_id=5, cond=Flags(torch.ones(2)),
                    uncond=Flags(torch.zeros(2)), config=config)
    assert len(seen) == 3
    assert all(torch.equal(cond.flags, torch.tensor([1.0, 1.0, 0.0, 0.0])) for cond in seen)
    assert torch.equal(result.tokens, (3 * conditional - 2 * unconditional).argmax(-1).expand(2, -1, -1, -1))


@pytest.mark.parametrize("guidance_scale", [0.0, 2.0])
def test_no_condition_reaches_the_network_as_none(guidance_scale):
    # cond = None is the null prompt for every sample; its unconditional twin is None too.
    seen = []

    def model_fn(tokens, cond):
        seen.append((tokens.shape[0], cond))
        return torch.zeros(*tokens.shape, 3)

    tokens, known = _problem(11, (1, 1, 2, 2), 3, 0.0)
    config = SamplerConfig(steps=2, guidance_scale=guidance_scale)
    result = sample(model_fn, tokens, known, mask_id=3, config=config)
    assert seen == [(2 if guidance_scale > 0 else 1, None)] * 2 and not (result.tokens == 3).any()


LOG_PROBS = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()
ROOTS = [0.5**0.5, 0.3**0.5, 0.15**0.5]  # unnormalised probabilities at temperature 2


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p", "expected"),
    [
        (1.0, None, 0.6, [0.625, 0.375, 0.0, 0.0]),  # 0.5 < 0.6 before token 1, 0.8 >= 0.6 before token 2
        (1.0, None, 0.85, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0]),
        (1.0, 3, None, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0]),
        (1.0, 2, 0.6, [1.0, 0.0, 0.0, 0.0]),  # top-p on top-k's renormalised [0.625, 0.375]
        (2.0, None, 0.7, [root / sum(ROOTS[:3]) for root in ROOTS[:3]] + [0.0]),
    ],
)
def test_top_k_and_top_p_keep_the_hand_computed_tokens(table_model, temperature, top_k, top_p, expected):
    # Top-p acts after the temperature: at 2 the probabilities flatten to [.379, .294, .208, .120],
    # so token 2 (0.673 < 0.7 before it) stays, where at temperature 1 (0.8 before it) it would go.
    model = table_model(LOG_PROBS.expand(1, 1, 100, 100, 4))
    tokens, known = _problem(12, (1, 1, 100, 100), 4, 0.0)
    config = SamplerConfig(steps=1, temperature=temperature, top_k=top_k, top_p=top_p)
    generator = torch.Generator().manual_seed(0)
    result = sample(model, tokens, known, mask_id=4, config=config, generator=generator)
    frequencies = torch.bincount(result.tokens.flatten(), minlength=4) / result.tokens.numel()
    assert torch.allclose(frequencies, torch.tensor(expected), atol=0.02)
    assert (frequencies[torch.tensor(expected) == 0] == 0).all()


def test_float64_default_dtype_is_not_an_issue(random_model):
    tokens, known = _problem(13, (1, 2, 3, 3), 5, 0.3)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        result = sample(lambda batch, cond: torch.randn(*batch.shape, 5), tokens, known, mask_id=5)
    finally:
        torch.set_default_dtype(previous)
    assert not (result.tokens == 5).any()


def test_unknown_counts_refuses_zero_steps():
    with pytest.raises(ValueError, match="steps must be >= 1"):
        unknown_counts(torch.tensor([4]), 0)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("guidance_scale", float("nan"), "guidance_scale must be a finite number in [0, 10000], got nan"),
    ("guidance_scale", float("inf"), "guidance_scale must be a finite number"),
    ("guidance_scale", 1e30, "guidance_scale must be a finite number in [0, 10000], got 1e+30"),
    ("temperature", float("nan"), "temperature must be a finite number"),
    ("temperature", 1e-30, "temperature must be 0 (argmax) or >= 0.0001"),
    ("choice_temperature", float("-inf"), "choice_temperature must be a finite number"),
    ("top_p", float("nan"), "top_p must be in (0, 1]"),
    ("steps", 10**9, "steps must be in [1, 10000]"),
])
def test_non_finite_and_overflowing_settings_are_refused(field, value, message):
    with pytest.raises(ValueError) as raised:
        SamplerConfig(**{field: value})
    assert message in str(raised.value)


@pytest.mark.parametrize("temperature", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_logits_stop_the_sampler_with_one_line(temperature, bad):
    """NaN weights or an overflowing input give non-finite logits: a clear error, never an out-of-range id or a
    silently arbitrary draw."""

    def model(tokens, cond):
        logits = torch.zeros(*tokens.shape, 5)
        logits[0, 0, 0, 0, 1] = bad
        return logits

    tokens, known = torch.zeros(1, 2, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"^the network's logits are not finite \(NaN or inf\) at 1 of 8 tokens"):
        sample(model, tokens, known, mask_id=5, config=SamplerConfig(steps=2, temperature=temperature))
