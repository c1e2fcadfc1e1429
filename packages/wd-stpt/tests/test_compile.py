"""torch.compile (one graph, and inductor's logits and gradients equal eager's), CUDA-graph replay, bf16 autocast
and activation checkpointing."""

import shutil

import pytest
import torch
import torch.nn.functional as F

from wd_stpt import STPT, GraphedForward, STPTCondition
from wd_stpt.condition import PromptEmbedding
from wd_stpt.layers import STPTBlock, image_attention_mask

# Compiled vs eager in float32: inductor fuses ops and reorders sums, which moved logits and gradients by at most
# 1e-7 here. 1e-5 absolute + 1e-4 relative leaves a wide margin yet fails on any real change (a lost mask, a
# wrong op), which moves logits by 1e-3 or more.
COMPILED = {"atol": 1e-5, "rtol": 1e-4}
needs_compiler = pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                                    reason="inductor's CPU backend compiles C++ and finds no compiler")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _full_condition(batch: int, frames: int, dims: tuple[int, int], seed: int = 0) -> STPTCondition:
    """Text with padding, actions, one image sample and one dropped prompt: every branch of the forward."""
    text_dim, action_dim = dims
    generator = torch.Generator().manual_seed(seed)
    text_mask = torch.ones(batch, 3, dtype=torch.bool)
    text_mask[0, -1] = False
    return STPTCondition(text=torch.randn(batch, 3, text_dim, generator=generator), text_mask=text_mask,
                         actions=torch.randn(batch, frames, action_dim, generator=generator),
                         is_image=torch.arange(batch) == 0, drop_prompt=torch.arange(batch) == batch - 1)


@pytest.mark.parametrize("image", [False, True])
def test_block_compiles_fullgraph(make_config, dims, image):
    torch.manual_seed(0)
    config = make_config()
    block, prompt_embedding = STPTBlock(config), PromptEmbedding(config)
    text_dim, action_dim = dims
    cond = STPTCondition(text=torch.randn(2, 3, text_dim), actions=torch.randn(2, 2, action_dim),
                         drop_prompt=torch.tensor([False, True]))
    prompt = prompt_embedding(cond, 2, 2)
    is_image = torch.tensor([True, False])
    frame_mask = image_attention_mask(is_image, 2, 4) if image else None
    video = ~is_image if image else None
    x = torch.randn(2, 2, 4, 4, config.width)
    compiled = torch.compile(block, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x, prompt, frame_mask, video), block(x, prompt, frame_mask, video))


@pytest.mark.parametrize("training", [False, True])
def test_stpt_traces_as_one_graph(make_model, random_tokens, dims, training):
    """fullgraph=True fails on any graph break, such as a host read of the token values or the image flags."""
    model = make_model(depth=3, action_scale=(0.5, 2.0, 1.0)).train(training)
    tokens, cond = random_tokens(3, 2, 4, 4), _full_condition(3, 2, dims)
    compiled = torch.compile(model, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(tokens, cond), model(tokens, cond))


@needs_compiler
def test_inductor_training_matches_eager(make_config, random_tokens, dims):
    """A training step compiled by inductor (CPU): logits, loss and every gradient as eager's within COMPILED."""
    torch.manual_seed(0)
    model = STPT(make_config()).train()
    tokens, cond = random_tokens(3, 2, 4, 4), _full_condition(3, 2, dims)
    targets = random_tokens(3, 2, 4, 4, seed=1, codebook_size=model.config.codebook_size - 1)
    results = []
    for forward in (model, torch.compile(model)):
        logits = forward(tokens, cond)
        loss = F.cross_entropy(logits.flatten(0, -2), targets.flatten())
        loss.backward()
        results.append((logits.detach(), loss.detach(), [param.grad for param in model.parameters()]))
        model.zero_grad(set_to_none=True)
    (eager_logits, eager_loss, eager_grads), (logits, loss, grads) = results
    torch.testing.assert_close(logits, eager_logits, **COMPILED)
    torch.testing.assert_close(loss, eager_loss, **COMPILED)
    assert all(grad is not None for grad in eager_grads)
    for grad, eager_grad in zip(grads, eager_grads, strict=True):
        torch.testing.assert_close(grad, eager_grad, **COMPILED)


def test_graphed_forward_refuses_cpu_tokens(make_model, random_tokens):
    with pytest.raises(ValueError, match="CUDA device"):
        GraphedForward(make_model())(random_tokens(1, 2, 4, 4))


@pytest.mark.gpu
@needs_cuda
def test_graphed_forward_replays_like_eager(make_model, random_tokens, dims):
    model = make_model(depth=3, action_scale=(0.5, 2.0, 1.0)).cuda()
    cond = _full_condition(2, 2, dims)
    cond = STPTCondition(**{name: getattr(cond, name).cuda() for name in vars(cond)})
    other = STPTCondition(**{name: value.flip(0) for name, value in vars(cond).items()})  # same layout
    graphed, graphs = GraphedForward(model), []
    with torch.no_grad():
        for seed, condition in ((0, cond), (1, other), (2, None), (3, cond)):
            tokens = random_tokens(2, 2, 4, 4, seed=seed).cuda()
            torch.testing.assert_close(graphed(tokens, condition), model(tokens, condition))
            graphs.append(graphed.graph)
    assert graphs[0] is graphs[1]  # new values of one layout replay the same graph
    assert len({id(graph) for graph in graphs}) == 3  # no condition, then a condition again: two recaptures


def test_bf16_autocast_matches_float32(make_model, random_tokens):
    model = make_model(depth=3)
    tokens = random_tokens(2, 2, 4, 4)
    cond = STPTCondition(is_image=torch.tensor([True, False]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(tokens, cond)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), model(tokens, cond), atol=0.05, rtol=0.05)


def test_activation_checkpointing_gives_the_same_gradients(make_config, random_tokens):
    tokens = random_tokens(1, 2, 4, 4)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = STPT(make_config(depth=3, activation_checkpointing=checkpointing)).train()
        model(tokens).square().mean().backward()
        grads.append([p.grad for p in model.parameters()])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(plain, checkpointed)


def test_activation_checkpointing_under_bf16_autocast(make_config, random_tokens, dims):
    """The recomputed forward must run under the same autocast state, so gradients match exactly."""
    text_dim, action_dim = dims
    tokens = random_tokens(2, 2, 4, 4)
    generator = torch.Generator().manual_seed(0)
    cond = STPTCondition(text=torch.randn(2, 3, text_dim, generator=generator),
                         actions=torch.randn(2, 2, action_dim, generator=generator),
                         is_image=torch.tensor([True, False]))
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = STPT(make_config(depth=3, activation_checkpointing=checkpointing)).train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(tokens, cond)
        assert logits.dtype == torch.bfloat16
        logits.float().square().mean().backward()
        grads.append([p.grad for p in model.parameters()])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(plain, checkpointed, atol=0, rtol=0)
