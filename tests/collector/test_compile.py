"""torch.compile'd models: only the first forward pass of a check step runs eagerly, also when
some monitored layers never run."""

from __future__ import annotations

import torch
from torch import nn

import collector
from storage import Database, runs, stats
from tests import needs


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
    dynamo = needs.module("torch._dynamo")
    # A monitor of an earlier test that was dropped while armed leaves force_eager behind.
    torch.compiler.set_stance("default")
    dynamo.reset()
    dynamo.utils.counters.clear()
    torch.manual_seed(0)
    model = NotAllRun()
    compiled = torch.compile(model, backend="eager")
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(1)
    eager_passes, calls, hooked = [], [], []
    with collector.watch(compiled, run="accum", db=sqlite_url, every=3, spool_dir=tmp_path) as m:
        for step in range(7):
            if step == 2:  # after compilation: dynamo ignores it, it runs in eager passes only
                model.out.register_forward_pre_hook(lambda *_: calls.append(1))
            for _ in range(4):  # gradient accumulation
                loss = compiled(torch.randn(2, 6, 8, generator=gen)).pow(2).mean() / 4
                loss.backward()
                hooked.append(any(module._forward_hooks for module in model.modules()))
            m.log(step, loss=loss)
            opt.step()
            opt.zero_grad()
            eager_passes.append(len(calls))
            calls.clear()

    assert eager_passes[2:] == [0, 1, 0, 0, 1]  # was [0, 4, 0, 0, 4]: every micro-batch
    assert not any(hooked)  # the first forward pass of a check step left nothing armed
    assert dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert dynamo.eval_frame._stance.stance == "default"
    db = Database(sqlite_url)
    rows = stats.layer_stats(db, runs.find_run(db, "accum").id)
    sampled = {r.layer for r in rows if r.sa_hist is not None}
    assert {r.step for r in rows} == {0, 3, 6} and sampled == {"inp", "out"}
