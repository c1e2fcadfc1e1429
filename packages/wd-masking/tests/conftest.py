"""Shared test helpers, handed out as fixtures (test files cannot import each other)."""

import pytest
import torch
from torch import Tensor


class TableModel:
    """A model_fn with fixed logits: `conditional` (B, N, h, w, K) for samples whose cond flag is 1,
    `unconditional` for flag 0. cond is a float (B,) tensor of flags, or None (= all unconditional).
    Records the tokens and flags of every call."""

    def __init__(self, conditional: Tensor, unconditional: Tensor | None = None) -> None:
        self.conditional = conditional
        self.unconditional = conditional if unconditional is None else unconditional
        self.tokens: list[Tensor] = []
        self.flags: list[Tensor] = []

    def __call__(self, tokens: Tensor, cond: Tensor | None) -> Tensor:
        flags = torch.zeros(tokens.shape[0]) if cond is None else cond
        self.tokens.append(tokens.clone())
        self.flags.append(flags.clone())
        repeats = tokens.shape[0] // self.conditional.shape[0]
        conditional = self.conditional.repeat(repeats, 1, 1, 1, 1)
        unconditional = self.unconditional.repeat(repeats, 1, 1, 1, 1)
        return torch.where(flags.view(-1, 1, 1, 1, 1) == 1, conditional, unconditional)


class RandomModel:
    """A model_fn with fresh seeded random logits at every call; counts calls and batch sizes."""

    def __init__(self, codebook_size: int, seed: int = 0) -> None:
        self.codebook_size = codebook_size
        self.generator = torch.Generator().manual_seed(seed)
        self.batch_sizes: list[int] = []
        self.tokens: list[Tensor] = []

    def __call__(self, tokens: Tensor, cond: object) -> Tensor:
        self.batch_sizes.append(tokens.shape[0])
        self.tokens.append(tokens.clone())
        return 3 * torch.randn(*tokens.shape, self.codebook_size, generator=self.generator)


@pytest.fixture(scope="session")
def table_model() -> type[TableModel]:
    return TableModel


@pytest.fixture(scope="session")
def random_model() -> type[RandomModel]:
    return RandomModel
