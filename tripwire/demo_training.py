"""The demo run: a small GPT on the standard library's source that trains, then explodes.

The learning rate warms up, holds at a healthy value while the loss falls, then ramps
geometrically past the edge of stability and stays there, so the loss jumps by several nats
part-way through the run. It takes about a minute on two CPU cores.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from tripwire.corpus import VOCAB_SIZE, TextCorpus
from tripwire.models import GPT, GPTConfig


@dataclass
class DemoConfig:
    """One demo run.

    With the defaults the loss falls from 5.5 to about 2.3 by step 200, creeps up while the
    learning rate ramps, and blows up (past 5 nats, then hundreds) at about step 320 of 450.
    """

    steps: int = 450
    """Optimizer steps."""
    seed: int = 0
    """Seeds the weights and the batches; the same seed gives the same losses."""
    batch_size: int = 16
    """Sequences per step."""
    block_size: int = 64
    """Tokens per sequence."""
    n_layer: int = 4
    """Transformer blocks."""
    n_head: int = 4
    """Attention heads per block."""
    d_model: int = 128
    """Model width."""
    qk_norm: bool = False
    """LayerNorm on each head's queries and keys."""
    lr: float = 3e-3
    """Learning rate of the healthy phase, reached after ``warmup_steps``."""
    warmup_steps: int = 50
    """Linear warm-up from 0 to ``lr``."""
    ramp_start: int = 200
    """Step at which the learning rate starts to grow geometrically."""
    ramp_steps: int = 150
    """Steps over which it grows from ``lr`` to ``peak_lr``; it then stays at ``peak_lr``."""
    peak_lr: float = 1.0
    """Final learning rate, past the edge of stability."""
    weight_decay: float = 0.1
    """AdamW weight decay."""
    grad_clip: float | None = None
    """Clip the global gradient norm to this value; ``None`` disables clipping."""

    def lr_at(self, step: int) -> float:
        """The learning rate used for ``step``.

        >>> cfg = DemoConfig(lr=1e-3, warmup_steps=10, ramp_start=100, ramp_steps=100, peak_lr=1e-1)
        >>> cfg.lr_at(4), cfg.lr_at(50), round(cfg.lr_at(150), 6), cfg.lr_at(400)
        (0.0005, 0.001, 0.01, 0.1)
        """
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if step < self.ramp_start:
            return self.lr
        progress = min(1.0, (step - self.ramp_start) / self.ramp_steps)
        return self.lr * (self.peak_lr / self.lr) ** progress

    def model_config(self) -> GPTConfig:
        """The GPT this demo trains."""
        return GPTConfig(
            vocab_size=VOCAB_SIZE,
            block_size=self.block_size,
            n_layer=self.n_layer,
            n_head=self.n_head,
            d_model=self.d_model,
            qk_norm=self.qk_norm,
        )


def train(
    config: DemoConfig | None = None,
    monitor: Any = None,
    on_step: Callable[[int, float, float], None] | None = None,
    watch: Callable[[GPT], Any] | None = None,
) -> list[float]:
    """Train the demo GPT and return the loss of every step (NaN and Inf included).

    ``monitor`` is anything with Tripwire's ``log(step, loss=..., lr=...)``; it is called after
    ``backward()`` and before the optimizer step. Since a monitor needs the model, ``watch`` may
    make it instead: it is called once with the freshly built model and returns the monitor
    (closing it stays the caller's job). ``on_step(step, loss, lr)`` is called after the optimizer
    step. Non-finite losses do not stop training.

    >>> cfg = DemoConfig(steps=3, batch_size=2, n_layer=1, d_model=32)
    >>> losses = train(cfg, watch=lambda model: None)  # e.g. collector.watch(model, run="demo")
    >>> len(losses), losses == train(cfg)
    (3, True)
    """
    if monitor is not None and watch is not None:
        raise ValueError("pass a monitor or a watch function, not both")
    config = config or DemoConfig()
    model, batches = build(config)
    if watch is not None:
        monitor = watch(model)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr_at(0), weight_decay=config.weight_decay
    )
    losses = []
    for step in range(config.steps):
        lr = config.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = batches()
        # Check steps also measure the attention logits and log Z (one extra attention matrix).
        model.measure_logits = monitor is not None and _is_check_step(monitor, step)
        loss = model(x, y)
        loss.backward()
        if monitor is not None:
            signals = model.logit_signals() if model.measure_logits else {}
            monitor.log(step, loss=loss.detach(), lr=lr, **signals)
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())  # note: a device-host sync point on GPU
        if on_step is not None:
            on_step(step, losses[-1], lr)
    return losses


def _is_check_step(monitor: Any, step: int) -> bool:
    is_check = getattr(monitor, "is_check_step", None)
    return bool(is_check(step)) if is_check is not None else False


def build(config: DemoConfig) -> tuple[GPT, Callable[[], tuple[torch.Tensor, torch.Tensor]]]:
    """The demo GPT initialised from ``config.seed``, and a function returning the next batch.

    For writing your own loop over the demo's model and data; ``train`` uses the same two.

    >>> model, batches = build(DemoConfig(n_layer=2))
    >>> x, y = batches()
    >>> model(x, y).ndim, x.shape
    (0, torch.Size([16, 64]))
    """
    torch.manual_seed(config.seed)
    model = GPT(config.model_config())
    corpus = TextCorpus()
    gen = torch.Generator().manual_seed(config.seed)
    return model, lambda: corpus.batch(config.batch_size, config.block_size, gen)


def explosion_step(losses: Sequence[float], margin: float = 1.0, window: int = 20) -> int | None:
    """The first step at which the loss explodes, or ``None`` if it never does.

    A step explodes when its loss is non-finite (NaN, +Inf or -Inf), or when it exceeds the
    running minimum of the earlier losses by more than ``margin`` nats and the median of the
    ``window`` losses starting there (fewer at the end of the series; non-finite ones count as
    +Inf) does too, so a lone spike that recovers is not an explosion.

    >>> explosion_step([3.0, 2.5, 2.0, 4.0, 2.1, 2.0, 1.9])  # a spike that recovers
    >>> explosion_step([3.0, 2.5, 2.0, 4.0, 4.5, 5.0, 5.0], window=4)
    3
    >>> explosion_step([3.0, 2.5, float("nan"), 2.0])
    2
    """
    running_min = math.inf
    for step, loss in enumerate(losses):
        if not math.isfinite(loss):
            return step
        if loss > running_min + margin:
            ahead = [x if math.isfinite(x) else math.inf for x in losses[step : step + window]]
            if statistics.median(ahead) > running_min + margin:
                return step
        running_min = min(running_min, loss)
    return None
