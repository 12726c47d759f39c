"""The collector on a real (small) training loop: what it stores is what was computed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import collector
from collector.spectral import SA_BINS
from storage import Database, runs, stats


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 32)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(32, 32)
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        return self.head(self.act(self.fc2(self.act(self.fc1(x)))))


def _batches(n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        x = torch.randn(4, 8, 12, generator=gen)  # (batch, tokens, features): 32 rows per step
        y = torch.randint(0, 3, (4, 8), generator=gen)
        yield x, y


def _train(model, monitor, steps: int, *, check_every: int, observe=None):
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    inputs = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o, n=n: inputs.__setitem__(n, i[0].detach().clone()))
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear)
    ]
    for step, (x, y) in enumerate(_batches(steps)):
        logits = model(x)
        loss = nn.functional.cross_entropy(logits.reshape(-1, 3), y.reshape(-1))
        loss.backward()
        if observe is not None and step % check_every == 0:
            observe(step, model, dict(inputs), loss.item())
        monitor.log(step, loss=loss, lr=0.05, tokens=float(x.numel()))
        opt.step()
        opt.zero_grad()
    for h in hooks:
        h.remove()


def _with_spectral_gap(model: nn.Module) -> nn.Module:
    """Give every weight a clear top singular direction, so that σ1 and v1 are well defined."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                out_f, in_f = module.weight.shape
                u, v = torch.randn(out_f, 1, generator=gen), torch.randn(1, in_f, generator=gen)
                module.weight.add_(2.0 * (u / u.norm()) @ (v / v.norm()))
    return model


def test_every_statistic_of_every_layer_and_check_is_stored_and_matches_an_oracle(
    sqlite_url, tmp_path
):
    model = _with_spectral_gap(TinyNet())
    expected = {}

    def observe(step, model, inputs, loss):
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear):
                w = module.weight.detach()
                s = torch.linalg.svdvals(w)
                expected[(step, name)] = {
                    "grad_norm": torch.linalg.norm(module.weight.grad).item(),
                    "weight_norm": torch.linalg.norm(w).item(),
                    "sigma1": s[0].item(),
                    "input": inputs[name].reshape(-1, w.shape[1]).numpy(),
                    "v1": torch.linalg.svd(w)[2][0].numpy(),
                    "weight": w.clone(),
                }

    monitor = collector.watch(
        model, run="tiny", db=sqlite_url, every=5, sample_size=4096, spool_dir=tmp_path
    )
    _train(model, monitor, 21, check_every=5, observe=observe)
    monitor.close()
    assert monitor.errors == 0

    db = Database(sqlite_url)
    run = runs.find_run(db, "tiny")
    assert run.status == "finished" and run.last_step == 20 and run.every == 5
    assert run.sa_bin_edges == pytest.approx(SA_BINS.tolist())
    assert [layer.name for layer in runs.layers(db, run.id)] == ["fc1", "fc2", "head"]

    points = stats.scalar_series(db, run.id)
    by_key = {}
    for p in points:
        by_key.setdefault(p.key, {})[p.step] = p.value
    assert sorted(by_key["loss"]) == list(range(21)) and sorted(by_key["lr"]) == list(range(21))
    assert by_key["tokens"][3] == 384.0
    assert sorted(by_key["grad_norm"]) == [0, 5, 10, 15, 20]  # global norms on check steps

    rows = stats.layer_stats(db, run.id)
    assert {(r.step, r.layer) for r in rows} == {
        (s, n) for s in (0, 5, 10, 15, 20) for n in ("fc1", "fc2", "head")
    }
    for row in rows:
        oracle = expected[(row.step, row.layer)]
        assert row.grad_norm == pytest.approx(oracle["grad_norm"], rel=1e-5)
        assert row.weight_norm == pytest.approx(oracle["weight_norm"], rel=1e-5)
        assert row.sigma1 == pytest.approx(oracle["sigma1"], rel=1e-3)
        assert row.stable_rank == pytest.approx(
            oracle["weight_norm"] ** 2 / oracle["sigma1"] ** 2, rel=1e-3
        )
        # SA against numpy, with every input row sampled (sample_size > rows per step).
        x = oracle["input"]
        v = np.asarray(oracle["v1"], dtype=np.float64)
        sa = x @ v / np.linalg.norm(x, axis=1)
        # v1's sign is arbitrary; the collector keeps it continuous, so compare sign-free and matched.
        if row.sa_mean is not None and np.sign(row.sa_mean) != np.sign(sa.mean()):
            sa = -sa
        assert row.sa_pos == pytest.approx(float((sa > 0).mean()), abs=1e-6)
        assert row.sa_imbalance == pytest.approx(abs(2 * float((sa > 0).mean()) - 1), abs=1e-6)
        assert row.sa_mean == pytest.approx(float(sa.mean()), abs=2e-3)
        assert row.sa_abs_mean == pytest.approx(float(np.abs(sa).mean()), abs=2e-3)
        assert row.act_max == pytest.approx(float(np.abs(x).max()), rel=1e-5)
        xc = x - x.mean(axis=0)  # centred on this step's batch: sign-free statistics
        sa_c = xc @ v / np.linalg.norm(xc, axis=1)
        assert row.sa_c_abs_mean == pytest.approx(float(np.abs(sa_c).mean()), abs=2e-3)
        assert row.sa_c_imbalance == pytest.approx(abs(2 * float((sa_c > 0).mean()) - 1), abs=1e-6)
        assert row.act_norm_mean == pytest.approx(float(np.linalg.norm(x, axis=1).mean()), rel=1e-5)
        assert sum(row.sa_hist) == x.shape[0] == 32
        hist, _ = np.histogram(sa, bins=np.asarray(run.sa_bin_edges))
        assert row.sa_hist == hist.tolist()
        if row.step == 0:
            assert math.isnan(row.update_ratio)  # nothing to compare with at the first check
        else:  # a 16-direction sketch of the exact relative change per step over 5 steps
            before = expected[(row.step - 5, row.layer)]["weight"]
            now = oracle["weight"]
            exact = ((now - before).norm() / now.norm()).item() / 5
            assert row.update_ratio == pytest.approx(exact, rel=0.5)
    drifts = [r.v_drift for r in rows if r.step == 0]
    assert all(math.isnan(d) for d in drifts)  # no previous v1 at the first check
    assert all(0 <= r.v_drift <= math.pi / 2 for r in rows if r.step > 0)


def test_non_finite_values_are_stored_as_what_they_are(sqlite_url, tmp_path):
    model = nn.Sequential(nn.Linear(4, 4))
    monitor = collector.watch(model, run="nan", db=sqlite_url, every=2, spool_dir=tmp_path)
    x = torch.randn(8, 4)
    for step, loss_value in enumerate([1.0, float("nan"), float("inf"), float("-inf")]):
        out = model(x).sum()
        out.backward()
        if step == 2:
            model[0].weight.grad.fill_(float("nan"))
        monitor.log(step, loss=torch.tensor(loss_value), lr=float("inf") if step == 3 else 0.1)
        model.zero_grad()
    monitor.close()
    db = Database(sqlite_url)
    run = runs.find_run(db, "nan")
    loss = {p.step: p.value for p in stats.scalar_series(db, run.id, ["loss"])}
    assert loss[0] == 1.0 and math.isnan(loss[1]) and loss[2] == math.inf and loss[3] == -math.inf
    assert {p.step: p.value for p in stats.scalar_series(db, run.id, ["lr"])}[3] == math.inf
    layer_rows = {r.step: r for r in stats.layer_stats(db, run.id)}
    assert math.isnan(layer_rows[2].grad_norm) and math.isfinite(layer_rows[0].grad_norm)
    global_grad = {p.step: p.value for p in stats.scalar_series(db, run.id, ["grad_norm"])}
    assert math.isnan(global_grad[2])


def test_a_model_without_linear_layers_records_scalars_only(sqlite_url, tmp_path):
    model = nn.Sequential(nn.Conv1d(2, 2, 3), nn.Embedding(4, 2))
    with collector.watch(
        model, run="no-linear", db=sqlite_url, every=1, spool_dir=tmp_path
    ) as monitor:
        for step in range(3):
            monitor.log(step, loss=1.0 / (step + 1))
    db = Database(sqlite_url)
    run = runs.find_run(db, "no-linear")
    assert stats.count_rows(db, run.id) == (3, 0) and monitor.errors == 0


def test_layer_patterns_choose_the_monitored_layers(sqlite_url, tmp_path):
    model = TinyNet()
    monitor = collector.watch(
        model, run="filtered", db=sqlite_url, layers="fc*", exclude="fc2", spool_dir=tmp_path
    )
    assert [layer.name for layer in monitor.layers] == ["fc1"]
    monitor.close()


def test_hooks_are_armed_only_for_check_steps(sqlite_url, tmp_path):
    model = TinyNet()
    monitor = collector.watch(model, run="hooks", db=sqlite_url, every=10, spool_dir=tmp_path)
    armed = []
    for step, (x, _) in enumerate(_batches(25)):
        armed.append(bool(model.fc1._forward_hooks))
        model(x).sum().backward()
        monitor.log(step, loss=1.0)
        model.zero_grad()
    monitor.close()
    assert [s for s, a in enumerate(armed) if a] == [0, 10, 20]


def test_watching_a_model_again_finishes_the_run_left_open_on_it(sqlite_url, tmp_path, caplog):
    # A notebook: training interrupted during a check step's forward, the cell run again.
    model = TinyNet()
    first = collector.watch(model, run="cell", db=sqlite_url, every=5, spool_dir=tmp_path)
    for step, (x, _) in enumerate(_batches(5)):
        model(x).sum().backward()
        first.log(step, loss=1.0)
        model.zero_grad()
    assert len(model.fc1._forward_hooks) == 1  # armed for the check at step 5, never reached
    other = collector.watch(TinyNet(), run="other", db=sqlite_url, spool_dir=tmp_path)

    second = collector.watch(model, run="cell-again", db=sqlite_url, every=5, spool_dir=tmp_path)
    assert len(model.fc1._forward_hooks) == 1  # the new run's, for its step 0
    assert "run 'cell' was still open on this model; finished it at step 4" in caplog.text
    db = Database(sqlite_url)
    assert runs.find_run(db, "cell").status == "finished"
    second.close()
    other.flush()
    assert runs.find_run(db, "other").status == "running"  # another model's run is left alone
    other.close()


class ScratchNet(nn.Module):
    """Reuses fc2's input buffer in place after fc2 has read it (legal outside autograd)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 32)
        self.fc2 = nn.Linear(32, 3)

    def forward(self, x):
        hidden = self.fc1(x)
        out = self.fc2(hidden)
        hidden.zero_()
        return out


def test_an_input_modified_in_place_after_its_forward_is_left_out_not_misread(sqlite_url, tmp_path):
    # The sampler keeps each layer's input itself, not a copy: an input that changed before
    # the check must not be measured as if it were what the layer saw.
    model = ScratchNet()
    monitor = collector.watch(model, run="scratch", db=sqlite_url, every=1, spool_dir=tmp_path)
    x, _ = next(_batches(1))
    with torch.no_grad(), pytest.warns(UserWarning, match="fc2 was modified in place"):
        model(x)
        monitor.log(0, loss=1.0)
    monitor.close()
    db = Database(sqlite_url)
    rows = {r.layer: r for r in stats.layer_stats(db, runs.find_run(db, "scratch").id)}
    assert rows["fc2"].sa_pos is None and rows["fc2"].sigma1 > 0
    assert rows["fc1"].sa_pos is not None and rows["fc1"].act_max == pytest.approx(
        float(x.abs().max())
    )


class EncoderAndHeads(nn.Module):
    """An nn.TransformerEncoderLayer (its ``self_attn.out_proj`` weight is used without calling
    the module) and six heads the training pass does not run."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.heads = nn.ModuleList(nn.Linear(16, 4) for _ in range(6))

    def forward(self, x):
        return self.encoder(x)


def test_layers_that_got_no_input_while_others_did_are_warned_of_once(sqlite_url, tmp_path, caplog):
    for name, model, width in (("all-ran", TinyNet(), 12), ("some-did-not", EncoderAndHeads(), 16)):
        with collector.watch(model, run=name, db=sqlite_url, every=1, spool_dir=tmp_path) as m:
            for step in range(3):
                model(torch.randn(2, 5, width)).square().mean().backward()
                m.log(step, loss=1.0)

    warned = [r.getMessage() for r in caplog.records if "got no input" in r.getMessage()]
    assert len(warned) == 1  # once, for the second run
    assert warned[0].startswith(
        "tripwire: encoder.self_attn.out_proj, heads.0, heads.1, heads.2, heads.3 and 2 more "
        "got no input at step 0 while other layers did"
    )
    assert "exclude=" in warned[0]
    db = Database(sqlite_url)
    rows = stats.layer_stats(db, runs.find_run(db, "some-did-not").id)
    assert {r.layer for r in rows if r.sa_hist is not None} == {
        "encoder.linear1",
        "encoder.linear2",
    }


def test_the_output_layers_log_z_is_stored_on_check_steps(sqlite_url, tmp_path):
    model = TinyNet()
    monitor = collector.watch(
        model, run="logz", db=sqlite_url, every=2, spool_dir=tmp_path, output_layer="head"
    )
    seen = {}
    for step, (x, _) in enumerate(_batches(5)):
        logits = model(x)  # (4, 8, 3): 32 positions, all of them sampled
        seen[step] = float(collector.log_z(logits))
        logits.sum().backward()
        monitor.log(step, loss=1.0)
        model.zero_grad()
    monitor.close()
    db = Database(sqlite_url)
    stored = {
        p.step: p.value for p in stats.scalar_series(db, runs.find_run(db, "logz").id, ["log_z"])
    }
    assert stored.keys() == {0, 2, 4}
    for step, value in stored.items():
        assert value == pytest.approx(seen[step], rel=1e-6)


def test_a_log_z_the_loop_logs_wins_and_auto_finds_no_output_layer_on_a_plain_module(
    sqlite_url, tmp_path
):
    model = TinyNet()
    named = collector.watch(
        model, run="own", db=sqlite_url, every=1, spool_dir=tmp_path, output_layer="head"
    )
    x, _ = next(_batches(1))
    model(x).sum().backward()
    named.log(0, loss=1.0, log_z=123.0)
    named.close()
    auto = collector.watch(TinyNet(), run="auto", db=sqlite_url, every=1, spool_dir=tmp_path)
    auto.log(0, loss=1.0)
    auto.close()
    db = Database(sqlite_url)
    logged = {
        r: [p.value for p in stats.scalar_series(db, runs.find_run(db, r).id, ["log_z"])]
        for r in ("own", "auto")
    }
    assert logged == {"own": [123.0], "auto": []}
    with pytest.raises(ValueError, match="output_layer 'lm_head' is not a submodule"):
        collector.watch(TinyNet(), db=sqlite_url, spool_dir=tmp_path, output_layer="lm_head")


class TiedHead(TinyNet):
    """Says its output embedding is an input embedding (as a tied model might): not logits."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 12)

    def get_output_embeddings(self) -> nn.Module:
        return self.embed


def test_auto_takes_only_a_linear_output_layer(sqlite_url, tmp_path):
    model = TiedHead()
    monitor = collector.watch(model, run="tied", db=sqlite_url, every=1, spool_dir=tmp_path)
    x, _ = next(_batches(1))
    model.embed(torch.zeros(4, dtype=torch.long))  # the "output embedding" runs, on lookups
    model(x).sum().backward()
    monitor.log(0, loss=1.0)
    monitor.close()
    db = Database(sqlite_url)
    assert stats.scalar_series(db, runs.find_run(db, "tied").id, ["log_z"]) == []


def test_a_failure_inside_the_collector_never_reaches_the_training_loop(
    sqlite_url, tmp_path, monkeypatch, caplog
):
    import collector.monitor as monitor_module

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(monitor_module, "start_check", broken)
    model = TinyNet()
    monitor = collector.watch(model, run="broken", db=sqlite_url, every=1, spool_dir=tmp_path)
    for step, (x, _) in enumerate(_batches(5)):
        model(x).sum().backward()
        monitor.log(step, loss=1.0)
    monitor.close()
    assert monitor.errors == 5
    assert sum("collector error" in r.message for r in caplog.records) == 1  # logged once


def test_an_exception_in_the_with_block_marks_the_run_failed(sqlite_url, tmp_path):
    with pytest.raises(ValueError):
        with collector.watch(TinyNet(), run="crash", db=sqlite_url, spool_dir=tmp_path) as monitor:
            monitor.log(0, loss=1.0)
            raise ValueError("diverged")
    run = runs.find_run(Database(sqlite_url), "crash")
    assert run.status == "failed" and "diverged" in run.error


def test_resuming_a_run_by_id_appends_to_it(sqlite_url, tmp_path):
    first = collector.watch(TinyNet(), run="resumable", db=sqlite_url, spool_dir=tmp_path)
    first.log(0, loss=2.0)
    first.close()
    second = collector.watch(TinyNet(), db=sqlite_url, run_id=first.uid, spool_dir=tmp_path)
    second.log(1, loss=1.0)
    second.close()
    db = Database(sqlite_url)
    assert len(runs.list_runs(db)) == 1
    run = runs.find_run(db, first.uid)
    assert [p.step for p in stats.scalar_series(db, run.id, ["loss"])] == [0, 1]


def test_bad_arguments_fail_at_start_up(sqlite_url):
    with pytest.raises(ValueError, match="every"):
        collector.watch(TinyNet(), db=sqlite_url, every=0)


class _FakeClock:
    """Time that passes only when told: ``step_s`` per training step (the test advances it) and
    ``check_s`` inside each check (between the two readings a check takes)."""

    def __init__(self, check_s: float):
        self.now, self.check_s, self._inside = 100.0, check_s, False

    def __call__(self) -> float:
        if self._inside:
            self.now += self.check_s
        self._inside = not self._inside
        return self.now


@pytest.mark.parametrize(
    "step_s, check_s, warned",
    [(0.010, 0.050, True), (0.100, 0.001, False)],
    ids=["checks-dominate", "checks-cheap"],
)
def test_each_check_records_its_cost_and_a_costly_one_is_warned_of_once(
    sqlite_url, tmp_path, monkeypatch, caplog, step_s, check_s, warned
):
    import collector.monitor as monitor_module

    clock = _FakeClock(check_s)
    monkeypatch.setattr(monitor_module, "_clock", clock)
    model = TinyNet()
    monitor = collector.watch(model, run="cost", db=sqlite_url, every=2, spool_dir=tmp_path)
    for step, (x, _) in enumerate(_batches(16)):
        model(x).sum().backward()
        clock.now += step_s
        monitor.log(step, loss=1.0)
    monitor.close()
    db = Database(sqlite_url)
    costs = stats.scalar_series(db, runs.find_run(db, "cost").id, ["tripwire_check_ms"])
    assert [p.step for p in costs] == list(range(0, 16, 2))
    assert all(p.value == pytest.approx(1000 * check_s) for p in costs)
    warnings = [r.getMessage() for r in caplog.records if "each check took" in r.getMessage()]
    if warned:
        # 50 ms of check against 2 × 10 ms of training: 71 %; at every=245, 50/(2450+50) = 2 %
        (message,) = warnings  # once, though every later check is as costly
        assert "71 %" in message and "every=2)" in message and "every=245" in message
    else:
        assert warnings == []
