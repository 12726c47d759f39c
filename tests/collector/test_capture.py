"""The input sampler: which rows each monitored layer's statistics are computed on."""

from __future__ import annotations

import torch
from torch import nn

from collector import capture
from collector.capture import InputSampler
from collector.layers import select_layers


class SharedInputs(nn.Module):
    """A Llama-style block in miniature: q, k and v read one tensor, as do gate and up."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.o = nn.Linear(d, d)
        self.gate, self.up = nn.Linear(d, 2 * d), nn.Linear(d, 2 * d)
        self.down = nn.Linear(2 * d, d)

    def forward(self, x):
        h = x + self.o(self.q(x) * self.k(x) + self.v(x))
        return h + self.down(nn.functional.silu(self.gate(h)) * self.up(h))


def _sample(model: nn.Module, x: torch.Tensor, sample_size: int) -> dict[str, torch.Tensor]:
    sampler = InputSampler(select_layers(model), sample_size=sample_size)
    sampler.arm()
    model(x).sum().backward()
    return sampler.take()


def _is_row_of(rows: torch.Tensor, x: torch.Tensor) -> bool:
    flat = x.reshape(-1, x.shape[-1])
    return all(bool((flat == r).all(dim=1).any()) for r in rows)


def test_layers_fed_the_same_tensor_share_one_sample_of_it():
    torch.manual_seed(0)
    model = SharedInputs()
    x = torch.randn(4, 64, 16)  # 256 rows, more than the 32 sampled: the samples are copies
    rows = _sample(model, x, sample_size=32)

    assert set(rows) == {"q", "k", "v", "o", "gate", "up", "down"}
    assert rows["q"] is rows["k"] is rows["v"]
    assert rows["gate"] is rows["up"]
    distinct = {id(r) for r in rows.values()}
    assert len(distinct) == 4  # x, o's input, h, down's input: each drawn and held once
    assert rows["q"].shape == (32, 16) and _is_row_of(rows["q"], x)
    assert not _is_row_of(rows["gate"], x)  # h, not x


def test_a_freed_input_is_not_mistaken_for_the_next_one_at_the_same_id(monkeypatch):
    # Without autograd nothing keeps a's input alive after a's call, and CPython may hand the
    # next tensor object the same id(). Forced here: every object gets id 0 in the sampler.
    class Temporaries(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(8, 4), nn.Linear(8, 4), nn.Linear(8, 4)

        def forward(self, x):
            y = x * 3
            return self.a(x * 2) + self.b(y) + self.c(y)

    monkeypatch.setattr(capture, "id", lambda obj: 0, raising=False)
    model = Temporaries()
    x = torch.randn(64, 8)
    sampler = InputSampler(select_layers(model), sample_size=16)
    sampler.arm()
    with torch.no_grad():
        model(x)
    rows = sampler.take()

    assert _is_row_of(rows["a"], 2 * x) and _is_row_of(rows["b"], 3 * x)
    assert rows["b"] is rows["c"]


def test_an_input_modified_in_place_between_two_layers_is_sampled_again():
    class Rescaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(8, 4), nn.Linear(8, 4)

        def forward(self, x):
            h = x * 1.0
            out = self.a(h)
            h.mul_(5.0)  # legal without autograd; b reads the new values
            return out + self.b(h)

    model = Rescaled()
    x = torch.randn(64, 8)
    sampler = InputSampler(select_layers(model), sample_size=16)  # copies: they stay valid
    sampler.arm()
    with torch.no_grad():
        model(x)
    rows = sampler.take()

    assert _is_row_of(rows["a"], x) and _is_row_of(rows["b"], 5 * x)
