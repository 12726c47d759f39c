"""torch.compile'd models: only the first forward pass of a check step runs eagerly, also when
some monitored layers never run."""

from __future__ import annotations

import torch
from torch import nn

import collector
from storage import Database, runs, stats
from tests import needs


def _fresh_dynamo():
    """torch._dynamo with no compiled code, no counts and the default stance (a monitor of an
    earlier test that was dropped while armed leaves force_eager behind)."""
    dynamo = needs.module("torch._dynamo")
    torch.compiler.set_stance("default")
    dynamo.reset()
    dynamo.utils.counters.clear()
    return dynamo


class NotAllRun(nn.Module):
    """Two monitored layers whose forward is never called: ``attn.out_proj`` (nn.MultiheadAttention
    uses its weight without calling it) and ``unused`` (a head the training pass skips)."""

    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.inp = nn.Linear(8, d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.out = nn.Linear(d, 4)
        self.unused = nn.Linear(d, d)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return self.out(h)


def test_only_the_first_micro_batch_of_a_check_step_runs_eagerly(sqlite_url, tmp_path):
    dynamo = _fresh_dynamo()
    torch.manual_seed(0)
    model = NotAllRun()
    compiled = torch.compile(model, backend="eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(1)
    eager_passes, calls, hooked = [], [], set()
    with collector.watch(compiled, run="accum", db=sqlite_url, every=3, spool_dir=tmp_path) as m:
        for step in range(7):
            if step == 2:  # after compilation: dynamo ignores it, it runs in eager passes only
                model.out.register_forward_pre_hook(lambda *_: calls.append(1))
            for _ in range(4):  # gradient accumulation
                loss = compiled(torch.randn(2, 6, 8, generator=gen)).pow(2).mean() / 4
                loss.backward()
                hooked |= {name for name, mod in model.named_modules() if mod._forward_hooks}
            m.log(step, loss=loss)
            opt.step()
            opt.zero_grad()
            eager_passes.append(len(calls))
            calls.clear()

    assert eager_passes[2:] == [0, 1, 0, 0, 1]  # was [0, 4, 0, 0, 4]: every micro-batch
    assert hooked == {"attn.out_proj", "unused"}  # armed until log(), never run
    assert not any(module._forward_hooks for module in model.modules())
    assert dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert dynamo.eval_frame._stance.stance == "default"
    db = Database(sqlite_url)
    rows = stats.layer_stats(db, runs.find_run(db, "accum").id)
    sampled = {r.layer for r in rows if r.sa_hist is not None}
    assert {r.step for r in rows} == {0, 3, 6} and sampled == {"inp", "out"}


class SometimesExtra(nn.Module):
    """``extra`` runs only when ``use_extra`` is set: not in a check step's first micro-batch,
    so it is still armed when the compiler first traces the path that runs it."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.extra, self.out = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)
        self.use_extra = False

    def forward(self, x):
        h = torch.relu(self.inp(x))
        if self.use_extra:
            h = h + self.extra(h)
        return self.out(h)


def test_code_compiled_while_a_layer_is_armed_traces_its_hook_as_nothing(sqlite_url, tmp_path):
    # A layer the check step's first micro-batch did not run stays armed (for a call outside
    # the model's forward pass) after the eager window closed, so the compiler can meet it.
    dynamo = _fresh_dynamo()
    torch.manual_seed(0)
    model = SometimesExtra()
    compiled = torch.compile(model, backend="eager")
    gen = torch.Generator().manual_seed(1)
    with collector.watch(compiled, run="traced", db=sqlite_url, every=3, spool_dir=tmp_path) as m:
        for step in range(7):
            for micro in range(2):
                model.use_extra = micro == 1  # first traced at step 0, extra's hook armed
                compiled(torch.randn(2, 5, 8, generator=gen)).square().mean().backward()
            m.log(step, loss=1.0)
        assert not m.errors

    # One per branch, and one more for the branch traced while extra's hook was registered:
    # dynamo guards on a traced module's hooks. Later checks reuse it: no recompile per check.
    assert dynamo.utils.counters["stats"]["unique_graphs"] == 3
    assert dynamo.eval_frame._stance.stance == "default"
    assert not any(module._forward_hooks for module in model.modules())
    db = Database(sqlite_url)
    rows = stats.layer_stats(db, runs.find_run(db, "traced").id)
    sampled = {(r.step, r.layer) for r in rows if r.sa_hist is not None}
    # extra runs only in compiled micro-batches: never sampled, and nothing breaks
    assert sampled == {(s, layer) for s in (0, 3, 6) for layer in ("inp", "out")}
