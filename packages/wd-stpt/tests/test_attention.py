"""The attention backends agree; xformers falls back to SDPA with a warning instead of crashing."""

import importlib
import sys
import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wd_stpt import STPTCondition, attention
from wd_stpt.attention import xformers_usable


def _inputs(batch, heads, length_q, length_k, dim, masked, seed, device="cpu", dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(batch, heads, length, dim, generator=generator).to(device, dtype)
               for length in (length_q, length_k, length_k))
    mask = None
    if masked:
        mask = torch.rand(batch, 1, length_q, length_k, generator=generator) < 0.6
        mask[..., 0] = True  # every query keeps at least one key
        mask = mask.to(device)
    return q, k, v, mask


@settings(max_examples=25, deadline=None)
@given(batch=st.integers(1, 3), heads=st.integers(1, 4), length_q=st.integers(1, 40), length_k=st.integers(1, 40),
       dim=st.sampled_from([8, 16, 64]), masked=st.booleans(), seed=st.integers(0, 1000))
def test_sdpa_matches_math(batch, heads, length_q, length_k, dim, masked, seed):
    q, k, v, mask = _inputs(batch, heads, length_q, length_k, dim, masked, seed)
    expected = attention(q, k, v, mask, backend="math")
    torch.testing.assert_close(attention(q, k, v, mask, backend="sdpa"), expected, atol=1e-5, rtol=1e-5)


def test_masked_keys_are_ignored_exactly():
    q, k, v, _ = _inputs(2, 2, 5, 6, 8, False, 0)
    mask = torch.tensor([True, True, True, False, False, True])[None, None, None]
    out = attention(q, k, v, mask)
    k2, v2 = k.clone(), v.clone()
    k2[..., 3:5, :], v2[..., 3:5, :] = 100.0, -7.0
    assert torch.equal(out, attention(q, k2, v2, mask))


@pytest.mark.skipif(xformers_usable(torch.device("cuda")), reason="xformers is usable here")
def test_xformers_falls_back_to_sdpa_with_a_warning():
    q, k, v, mask = _inputs(2, 2, 7, 5, 16, True, 1)
    with pytest.warns(RuntimeWarning, match="using PyTorch SDPA"):
        out = attention(q, k, v, mask, backend="xformers")
    assert torch.equal(out, attention(q, k, v, mask, backend="sdpa"))


def test_unknown_backend_is_refused():
    q, k, v, _ = _inputs(1, 1, 2, 2, 8, False, 0)
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention(q, k, v, backend="flash9")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or not xformers_usable(torch.device("cuda")),
                    reason="needs CUDA and xformers")
@pytest.mark.parametrize("masked", [False, True])
def test_xformers_matches_sdpa_on_cuda(masked):
    q, k, v, mask = _inputs(2, 4, 77, 33, 64, masked, 2, device="cuda", dtype=torch.float16)
    torch.testing.assert_close(attention(q, k, v, mask, backend="xformers"), attention(q, k, v, mask), atol=2e-3,
                               rtol=2e-3)


def test_model_backends_agree(make_model, random_tokens):
    tokens = random_tokens(2, 3, 4, 4)
    cond = STPTCondition(is_image=torch.tensor([True, False]), actions=torch.randn(2, 3, 3))
    sdpa, math = make_model(depth=3), make_model(depth=3, attention_backend="math")
    torch.testing.assert_close(math(tokens, cond), sdpa(tokens, cond), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("failure", [ImportError, OSError, NotImplementedError, RuntimeError])
def test_importable_but_broken_xformers_falls_back(monkeypatch, failure):
    """xformers found and the device looks right, yet its kernel fails: warn and use SDPA, never crash."""
    def broken(*args, **kwargs):
        raise failure("built for another torch")

    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = broken
    monkeypatch.setitem(sys.modules, "xformers", types.ModuleType("xformers"))
    monkeypatch.setitem(sys.modules, "xformers.ops", ops)
    attention_module = importlib.import_module("wd_stpt.attention")  # the package re-exports the function
    monkeypatch.setattr(attention_module, "xformers_usable", lambda device: True)
    monkeypatch.setattr(attention_module, "_warned", set())
    q, k, v, mask = _inputs(2, 2, 7, 5, 16, True, 3)
    with pytest.warns(RuntimeWarning, match=f"xformers attention failed \\({failure.__name__}"):
        out = attention(q, k, v, mask, backend="xformers")
    assert torch.equal(out, attention(q, k, v, mask, backend="sdpa"))
