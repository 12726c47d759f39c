"""The demo run and the benchmark models, with real (short) training."""

import math

import pytest
import torch

from tripwire.corpus import VOCAB_SIZE, TeacherTask, TextCorpus
from tripwire.demo_training import DemoConfig, explosion_step, train
from tripwire.models import GPT, DeepMLP, GPTConfig, MLPConfig

TINY = dict(batch_size=4, block_size=32, n_layer=1, n_head=2, d_model=32)
INF, NAN = math.inf, math.nan


pytestmark = pytest.mark.usefixtures("one_thread")


def test_same_seed_same_losses_other_seed_other_losses():
    cfg = DemoConfig(steps=15, **TINY)
    first, second = train(cfg), train(cfg)
    assert first == second
    assert train(DemoConfig(steps=15, seed=1, **TINY)) != first


def test_loss_falls_in_the_healthy_phase():
    cfg = DemoConfig(steps=60, warmup_steps=10, batch_size=8, block_size=32, n_layer=1, d_model=32)
    losses = train(cfg)
    assert losses[0] == pytest.approx(math.log(VOCAB_SIZE), abs=0.1)
    assert sum(losses[-10:]) / 10 < losses[0] - 1.5


def test_monitor_sees_every_step_after_backward_before_the_optimizer_step():
    cfg = DemoConfig(steps=5, warmup_steps=5, **TINY)
    logged, seen = [], []

    class Monitor:
        def __init__(self, model):
            self.model = model

        def log(self, step, loss, lr):
            assert isinstance(loss, torch.Tensor) and not loss.requires_grad
            assert all(p.grad is not None for p in self.model.parameters())
            logged.append((step, loss.item(), lr))

    losses = train(cfg, on_step=lambda *args: seen.append(args), watch=Monitor)
    assert logged == seen == [(s, losses[s], cfg.lr_at(s)) for s in range(5)]
    assert losses == train(cfg)
    with pytest.raises(ValueError, match="not both"):
        train(cfg, Monitor(None), watch=Monitor)


def test_check_steps_also_log_the_logit_signals_without_changing_training():
    cfg = DemoConfig(steps=6, warmup_steps=5, **TINY)
    extras = {}

    class Monitor:
        def is_check_step(self, step):
            return step % 3 == 0

        def log(self, step, loss, lr, **scalars):
            extras[step] = {k: float(v) for k, v in scalars.items()}

    losses = train(cfg, watch=lambda model: Monitor())
    assert losses == train(cfg)
    assert [s for s, e in extras.items() if e] == [0, 3]
    for step in (0, 3):
        assert set(extras[step]) == {"attn_logit_max", "log_z"}
        assert 0 < extras[step]["attn_logit_max"] < 50
        # near-uniform logits at the start: log Z close to log(vocabulary size)
        assert abs(extras[step]["log_z"] - math.log(256)) < 1.0


def test_non_finite_loss_does_not_stop_training():
    cfg = DemoConfig(steps=12, warmup_steps=1, lr=1e4, ramp_start=12, **TINY)
    losses = train(cfg)
    assert len(losses) == 12
    assert explosion_step(losses) is not None


@pytest.mark.slow
def test_default_demo_trains_then_explodes():
    cfg = DemoConfig()
    losses = train(cfg)
    step = explosion_step(losses)
    assert step is not None and 150 < step < cfg.steps - 20
    healthy = losses[: cfg.ramp_start]
    assert min(healthy[-20:]) < healthy[0] - 2.5
    after = [x if math.isfinite(x) else INF for x in losses[step:]]
    assert sorted(after)[len(after) // 2] > min(healthy) + 2.0


@pytest.mark.parametrize(
    ("losses", "expected"),
    [
        ([], None),
        ([3.0, 2.0, 1.5, 1.2, 1.0], None),
        ([3.0, 2.0, 3.5, 2.0, 1.9, 1.8], None),  # one spike that recovers
        ([3.0, 2.0, 1.8, 3.0, 3.5, 4.0, 9.0], 3),
        ([3.0, 2.0, 2.5, 2.9, 3.5, 6.0, 7.0], 4),  # above the running minimum, not the last loss
        ([3.0, 2.0, NAN, 1.0], 2),
        ([3.0, INF], 1),
        ([-INF, 3.0], 0),
        ([3.0, 2.0, 3.5, NAN, INF, 2.0], 2),  # non-finite losses count as high
    ],
)
def test_explosion_step_on_literal_series(losses, expected):
    assert explosion_step(losses) == expected


def test_explosion_step_margin_and_window():
    losses = [2.0] * 5 + [2.6] * 30
    assert explosion_step(losses) is None
    assert explosion_step(losses, margin=0.5) == 5
    spike = [2.0] * 5 + [5.0] * 5 + [2.0] * 30
    assert explosion_step(spike) is None
    assert explosion_step(spike, window=8) == 5


def test_lr_schedule_warms_up_holds_ramps_and_stays():
    cfg = DemoConfig()
    lrs = [cfg.lr_at(s) for s in range(cfg.steps)]
    assert lrs[0] < lrs[cfg.warmup_steps - 1] == cfg.lr
    assert set(lrs[cfg.warmup_steps : cfg.ramp_start]) == {cfg.lr}
    ramp = lrs[cfg.ramp_start : cfg.ramp_start + cfg.ramp_steps + 1]
    assert ramp == sorted(ramp) and ramp[-1] == pytest.approx(cfg.peak_lr)
    assert lrs[-1] == pytest.approx(cfg.peak_lr)


def test_corpus_is_deterministic_and_shifted_by_one():
    corpus = TextCorpus()
    assert 1_000_000 < len(corpus) <= 4_000_000
    x1, y1 = corpus.batch(8, 64, torch.Generator().manual_seed(3))
    x2, y2 = corpus.batch(8, 64, torch.Generator().manual_seed(3))
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert torch.equal(x1[:, 1:], y1[:, :-1])
    assert x1.dtype == torch.long and int(x1.max()) < VOCAB_SIZE
    assert "def " in TextCorpus.decode(corpus.data[:20_000])


def test_gpt_layer_names_and_knobs():
    cfg = GPTConfig(n_layer=2, d_model=32, n_head=4, qk_norm=True, tie_weights=True, bias=False)
    model = GPT(cfg)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert linears == [
        "blocks.0.attn.qkv",
        "blocks.0.attn.proj",
        "blocks.0.mlp.fc",
        "blocks.0.mlp.proj",
        "blocks.1.attn.qkv",
        "blocks.1.attn.proj",
        "blocks.1.mlp.fc",
        "blocks.1.mlp.proj",
        "lm_head",
    ]
    assert model.lm_head.weight is model.tok_emb.weight
    assert all(m.bias is None for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert isinstance(model.blocks[0].attn.q_norm, torch.nn.LayerNorm)
    with pytest.raises(ValueError, match="longer than block_size"):
        model(torch.zeros(1, cfg.block_size + 1, dtype=torch.long))


def test_gpt_is_causal():
    model = GPT(GPTConfig(n_layer=1, d_model=32, n_head=2, block_size=16)).eval()
    idx = torch.randint(VOCAB_SIZE, (1, 16), generator=torch.Generator().manual_seed(0))
    changed = idx.clone()
    changed[0, 10] = (idx[0, 10] + 1) % VOCAB_SIZE
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert torch.allclose(a[0, :10], b[0, :10])
    assert not torch.allclose(a[0, 10:], b[0, 10:])


@pytest.mark.parametrize("norm", ["none", "layer", "batch"])
def test_deep_mlp_learns_the_teacher_task(norm):
    torch.manual_seed(0)
    task = TeacherTask(d_in=16, n_classes=4, seed=0)
    model = DeepMLP(MLPConfig(d_in=16, width=32, depth=6, n_classes=4, norm=norm))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(100):
        x, y = task.batch(64, gen)
        loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.75 * sum(losses[:10]) / 10


def test_deep_mlp_rejects_unknown_norm():
    with pytest.raises(ValueError, match="norm must be one of"):
        DeepMLP(MLPConfig(norm="group"))


def test_demo_help_states_the_default_number_of_steps():
    from click.testing import CliRunner

    from tripwire.cli import cli

    help_text = CliRunner().invoke(cli, ["demo", "--help"]).output
    assert f"default {DemoConfig().steps};" in help_text
