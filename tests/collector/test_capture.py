"""The input sampler: which rows each monitored layer's statistics are computed on."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

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


class Branches(nn.Module):
    """``b`` inside an activation-checkpointed segment (re-run by the backward pass), ``unused``
    never run in training (an auxiliary head)."""

    def __init__(self, reentrant: bool | None = None) -> None:
        super().__init__()
        self.a, self.b, self.unused = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.reentrant = reentrant

    def segment(self, h):
        return torch.relu(self.b(h))

    def forward(self, x):
        h = torch.relu(self.a(x))
        if self.reentrant is None:
            return self.segment(h)
        return checkpoint(self.segment, h, use_reentrant=self.reentrant)


def _hooked(model: nn.Module) -> bool:
    return any(module._forward_hooks for module in model.modules())


@pytest.mark.parametrize("reentrant", [None, True, False])
def test_a_check_samples_each_layers_first_call_and_a_layer_not_run_stays_armed(reentrant):
    model = Branches(reentrant)
    calls = []
    model.b.register_forward_pre_hook(lambda *_: calls.append(1))
    sampler = InputSampler(select_layers(model), sample_size=16, root=model)
    sampler.arm()
    x = torch.randn(64, 8, requires_grad=True)
    model(x).sum().backward()
    hooked = [name for name, module in model.named_modules() if module._forward_hooks]
    model(2 * x).sum().backward()  # the next micro-batch
    head_input = torch.randn(4, 8)
    model.unused(head_input)  # called outside the root's forward, as in head(model(x))
    rows = sampler.take()

    assert hooked == ["unused"]  # the root's own hook went when its forward pass ended
    assert len(calls) == (2 if reentrant is None else 4)  # the backward did re-run b
    assert set(rows) == {"a", "b", "unused"}
    assert _is_row_of(rows["a"], x) and not _is_row_of(rows["a"], 2 * x)
    with torch.no_grad():
        assert _is_row_of(rows["b"], torch.relu(model.a(x)))  # not the recomputation's
    assert _is_row_of(rows["unused"], head_input)
    assert not _hooked(model)


def test_a_root_whose_forward_is_not_called_stays_armed_until_every_layer_ran():
    # A Lightning training_step calls submodules: the root's forward never runs.
    model = Branches()
    sampler = InputSampler(select_layers(model), sample_size=16, root=model)
    sampler.arm()
    model.a(torch.randn(4, 8))
    model.b(torch.randn(4, 8))
    assert sampler.armed and model.unused._forward_hooks
    model.unused(torch.randn(4, 8))
    assert not sampler.armed and not _hooked(model)  # the root's hook went with the last layer
    assert set(sampler.take()) == {"a", "b", "unused"}

    sampler.arm()
    model.a(torch.randn(4, 8))
    assert set(sampler.take()) == {"a"} and not _hooked(model)


def test_a_ddp_wrapped_roots_hook_fires_when_the_inner_modules_forward_ends():
    # watch() unwraps DDP: the root is the inner module, whose forward DDP's calls.
    dist = pytest.importorskip("torch.distributed")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = Branches()
        ddp = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        sampler = InputSampler(select_layers(model), sample_size=16, root=model)
        sampler.arm()
        ddp(torch.randn(4, 8)).sum().backward()
        hooked = [name for name, module in model.named_modules() if module._forward_hooks]
        assert hooked == ["unused"]  # the root's hook fired: the inner module's forward ended
        assert set(sampler.take()) == {"a", "b"} and not _hooked(model)
    finally:
        dist.destroy_process_group()
