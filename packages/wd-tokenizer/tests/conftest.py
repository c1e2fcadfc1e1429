"""Shared fixtures: a tiny tokenizer config and a fixed synthetic clip generated with torch."""

import pytest
import torch

from wd_tokenizer import VQGAN, get_config


@pytest.fixture(autouse=True, scope="session")
def single_thread():
    # The CI machine has 2 cores shared by parallel jobs; one thread avoids oversubscription stalls.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_config():
    """An f4 tokenizer of ~200K parameters with a 256-code VectorQuantize codebook using every keep-alive option."""
    return get_config(
        "f8-small", hidden_channels=16, channel_mult=[1, 2, 2], z_channels=16, embed_dim=16, num_embeddings=256,
        quantizer="vq", codebook_dim=8, use_cosine_sim=True, kmeans_init=True, threshold_ema_dead_code=2.0,
        ema_decay=0.95,
    )


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
    """Untrained, but its k-means codebook is initialised by one training-mode batch (tests only encode/decode)."""
    torch.manual_seed(0)
    model = VQGAN(tiny_config)
    model(torch.rand(8, 3, 32, 32))
    return model.eval()


@pytest.fixture(scope="session")
def synthetic_clip():
    """Uint8 (8, 32, 32, 3): two coloured squares moving over a colour gradient."""
    generator = torch.Generator().manual_seed(0)
    size, square = 32, 8
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    tint = torch.rand(3, generator=generator)
    colours = torch.rand(2, 3, generator=generator)
    frames = []
    for t in range(8):
        frame = torch.stack([tint[0] * xs, tint[1] * ys, tint[2] * (1 - xs)], dim=-1)
        for k, colour in enumerate(colours):
            x0, y0 = (2 * t + 10 * k) % (size - square), (3 * t + 7 * k + 5) % (size - square)
            frame[y0 : y0 + square, x0 : x0 + square] = colour
        frames.append(frame)
    return (torch.stack(frames) * 255).round().to(torch.uint8)
