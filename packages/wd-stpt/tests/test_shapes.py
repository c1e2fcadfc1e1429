"""Output shape over random small configs and inputs."""

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wd_stpt import STPT, STPTCondition

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(
    depth=st.integers(1, 3),
    num_heads=st.sampled_from([1, 2, 4]),
    stride=st.integers(1, 3),
    conv=st.sampled_from(["depthwise", "factorized", "full", "none"]),
    batch=st.integers(1, 2),
    frames=st.integers(1, 3),
    rows=st.integers(1, 2),
    cols=st.integers(1, 2),
    codebook=st.integers(2, 20),
    text_len=st.sampled_from([None, 1, 3]),
    with_actions=st.booleans(),
    flags=st.sampled_from([None, "image", "drop"]),
    seed=st.integers(0, 2**16),
)
def test_logits_shape(make_config, dims, depth, num_heads, stride, conv, batch, frames, rows, cols, codebook,
                      text_len, with_actions, flags, seed):
    torch.manual_seed(seed)
    model = STPT(make_config(depth=depth, num_heads=num_heads, patch_stride=stride, conv=conv,
                             codebook_size=codebook)).eval()
    height, width = rows * stride, cols * stride
    tokens = torch.randint(0, codebook + 1, (batch, frames, height, width))
    text_dim, action_dim = dims
    flag = torch.rand(batch) < 0.5
    cond = STPTCondition(
        text=None if text_len is None else torch.randn(batch, text_len, text_dim),
        actions=torch.randn(batch, frames, action_dim) if with_actions else None,
        is_image=flag if flags == "image" else None,
        drop_prompt=flag if flags == "drop" else None,
    )
    logits = model(tokens, cond)
    assert logits.shape == (batch, frames, height, width, codebook)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
