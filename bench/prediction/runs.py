"""The suite's training runs: what each one trains, with which knobs, and the loop that trains it.

Every run is small (a two-layer GPT on the standard library's source, or a deep ReLU MLP on a
teacher task), single-threaded and deterministic by seed. A divergent run trains normally for
at least 150 steps and then explodes; each stable run is one knob away from a divergent one;
the negative control multiplies the learning rate by 10 at a fixed step, an operator mistake
that no statistic can foresee.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from tripwire.corpus import VOCAB_SIZE, TeacherTask, TextCorpus
from tripwire.models import GPT, DeepMLP, GPTConfig, MLPConfig

DIVERGENT, STABLE, CONTROL = "divergent", "stable", "control"


@dataclass(frozen=True)
class Schedule:
    """Learning rate: linear warm-up, hold, geometric ramp to ``peak``, and an optional jump.

    >>> s = Schedule(lr=1e-3, warmup=10, ramp_start=100, ramp_steps=100, peak=1e-1)
    >>> s.at(4), s.at(50), round(s.at(150), 6), s.at(400)
    (0.0005, 0.001, 0.01, 0.1)
    >>> Schedule(lr=1e-3, jump_step=50, jump=10).at(60)
    0.01
    """

    lr: float
    warmup: int = 50
    ramp_start: int | None = None
    ramp_steps: int = 150
    peak: float | None = None
    jump_step: int | None = None
    jump: float = 1.0

    def at(self, step: int) -> float:
        lr = self.lr * min(1.0, (step + 1) / self.warmup) if self.warmup else self.lr
        if self.ramp_start is not None and self.peak is not None and step >= self.ramp_start:
            progress = min(1.0, (step - self.ramp_start) / self.ramp_steps)
            lr = self.lr * (self.peak / self.lr) ** progress
        if self.jump_step is not None and step >= self.jump_step:
            lr *= self.jump
        return lr


@dataclass(frozen=True)
class RunSpec:
    """One benchmark run. ``kind`` is divergent, stable or control; ``twin`` names the run one
    knob away (calibration never uses a scored run's twin)."""

    name: str
    kind: str
    arch: str
    mechanism: str
    schedule: Schedule
    steps: int = 400
    seed: int = 0
    optimizer: str = "adamw"
    opt: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)
    precision: str = "float32"
    """``"bfloat16"``: weights, activations and optimizer state all in bfloat16 (low precision)."""
    twin: str | None = None
    change_step: int | None = None
    """Control runs: the step of the operator's mistake (alerts before it are false alarms)."""
    focus: str | None = None
    """Parameters whose name contains this (e.g. ``"attn.qkv"``) follow ``focus_schedule``
    instead of ``schedule``: a learning-rate mistake confined to one kind of layer."""
    focus_schedule: Schedule | None = None
    focus_opt: dict = field(default_factory=dict)
    """Optimizer settings of the focused parameter group (e.g. its weight decay)."""
    z_loss: float = 0.0
    """Weight of the PaLM z-loss ``log(Z)^2`` on the output logits (0: off)."""

    def config(self) -> dict[str, Any]:
        """JSON-able description stored with the run (and compared on reuse). Knobs at their
        defaults that were added later are left out, so older recordings stay valid."""
        out = asdict(self)
        for key in ("focus", "focus_schedule", "focus_opt", "z_loss"):
            if not out[key]:
                del out[key]
        return out


GPT_SHAPE = {"n_layer": 2, "n_head": 4, "d_model": 64, "block_size": 48}
MLP_SHAPE = {"d_in": 32, "width": 128, "depth": 8, "n_classes": 10}
LLAMA_SHAPE = {
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "hidden_size": 64,
    "intermediate_size": 172,
    "max_position_embeddings": 48,
}
"""transformers' ``LlamaForCausalLM`` at the GPT's size: RMSNorm, SwiGLU, rotary positions,
separate q/k/v projections, no qk-norm (``bench.prediction.llama``; not in the suite)."""
_ADAM = {"weight_decay": 0.1}
_SGD = {"momentum": 0.9}

SUITE: list[RunSpec] = [
    # --- learning rate past the edge of stability after warm-up (GPT, AdamW) -----------------
    RunSpec(
        "gpt-lr-ramp",
        DIVERGENT,
        "gpt",
        "lr-edge",
        Schedule(3e-3, ramp_start=200, ramp_steps=150, peak=0.1),
        opt=_ADAM,
        twin="gpt-lr-ramp-safe",
    ),
    RunSpec(
        "gpt-lr-ramp-s1",
        DIVERGENT,
        "gpt",
        "lr-edge",
        Schedule(3e-3, ramp_start=150, ramp_steps=200, peak=0.1),
        seed=1,
        opt=_ADAM,
        twin="gpt-lr-ramp-safe",
    ),
    RunSpec(
        "gpt-lr-ramp-safe",
        STABLE,
        "gpt",
        "lr-edge",
        Schedule(3e-3, ramp_start=200, ramp_steps=150, peak=0.03),
        opt=_ADAM,
        twin="gpt-lr-ramp",
    ),
    # --- attention-logit growth without query/key normalisation (GPT) -------------------------
    RunSpec(
        "gpt-attn-noqk",
        DIVERGENT,
        "gpt",
        "attn-logits",
        Schedule(1e-2, ramp_start=150, ramp_steps=150, peak=0.25),
        steps=450,
        opt=_ADAM,
        twin="gpt-attn-qknorm",
    ),
    RunSpec(
        "gpt-attn-qknorm",
        STABLE,
        "gpt",
        "attn-logits",
        Schedule(1e-2, ramp_start=150, ramp_steps=150, peak=0.25),
        steps=450,
        opt=_ADAM,
        model={"qk_norm": True},
        twin="gpt-attn-noqk",
    ),
    # --- SGD with momentum on a deep unnormalised MLP ------------------------------------------
    RunSpec(
        "mlp-sgd-ramp",
        DIVERGENT,
        "mlp",
        "sgd-momentum",
        Schedule(0.01, ramp_start=200, ramp_steps=200, peak=3.0),
        optimizer="sgd",
        opt=_SGD,
        twin="mlp-sgd-safe",
    ),
    RunSpec(
        "mlp-sgd-ramp-s1",
        DIVERGENT,
        "mlp",
        "sgd-momentum",
        Schedule(0.01, ramp_start=150, ramp_steps=250, peak=3.0),
        seed=1,
        optimizer="sgd",
        opt=_SGD,
        twin="mlp-sgd-safe",
    ),
    # Its peak was 0.3 until 2026-11-29: the ramp reached it on the last step, and held there
    # it explodes (`bench.prediction.held`: step 592 on an Intel Xeon, 382 on an AMD EPYC).
    # Held 400 steps, 0.25 explodes too at seeds 0 and 2 (steps 692, 663; Xeon) and 0.2 trains
    # on at seeds 0-2.
    RunSpec(
        "mlp-sgd-safe",
        STABLE,
        "mlp",
        "sgd-momentum",
        Schedule(0.01, ramp_start=200, ramp_steps=200, peak=0.2),
        optimizer="sgd",
        opt=_SGD,
        twin="mlp-sgd-ramp",
    ),
    # --- Adam past its learning-rate edge on the deep MLP (eps and beta2 do not matter here) --
    RunSpec(
        "mlp-adam-ramp",
        DIVERGENT,
        "mlp",
        "adam-lr-edge",
        Schedule(1e-3, ramp_start=150, ramp_steps=250, peak=0.2),
        optimizer="adam",
        opt={"eps": 1e-12, "betas": (0.9, 0.95)},
        twin="mlp-adam-safe",
    ),
    RunSpec(
        "mlp-adam-safe",
        STABLE,
        "mlp",
        "adam-lr-edge",
        Schedule(1e-3, ramp_start=150, ramp_steps=250, peak=0.03),
        optimizer="adam",
        opt={"eps": 1e-12, "betas": (0.9, 0.95)},
        twin="mlp-adam-ramp",
    ),
    # --- attention-logit growth: a learning-rate ramp on the q/k/v projection only ------------
    # (bench/prediction/probe.py: the largest q·k/sqrt(d) grows from ~15 to >10^4 before the
    # loss explodes; with qk-norm it stays near 5)
    RunSpec(
        "gpt-qkv-ramp",
        DIVERGENT,
        "gpt",
        "attn-logits",
        Schedule(3e-3),
        steps=450,
        opt=_ADAM,
        focus="attn.qkv",
        focus_schedule=Schedule(3e-3, ramp_start=150, ramp_steps=200, peak=0.3),
        twin="gpt-qkv-ramp-qknorm",
    ),
    RunSpec(
        "gpt-qkv-ramp-s1",
        DIVERGENT,
        "gpt",
        "attn-logits",
        Schedule(3e-3),
        steps=450,
        seed=1,
        opt=_ADAM,
        focus="attn.qkv",
        focus_schedule=Schedule(3e-3, ramp_start=150, ramp_steps=200, peak=0.6),
        twin="gpt-qkv-ramp-qknorm",
    ),
    RunSpec(
        "gpt-qkv-ramp-qknorm",
        STABLE,
        "gpt",
        "attn-logits",
        Schedule(3e-3),
        steps=450,
        opt=_ADAM,
        model={"qk_norm": True},
        focus="attn.qkv",
        focus_schedule=Schedule(3e-3, ramp_start=150, ramp_steps=200, peak=0.6),
        twin="gpt-qkv-ramp",
    ),
    # the same ramp at a 3x and a 10x lower peak: the attention logits still climb into the
    # hundreds or thousands, and the loss never explodes (900 steps tried)
    RunSpec(
        "gpt-qkv-ramp-mid",
        STABLE,
        "gpt",
        "attn-logits",
        Schedule(3e-3),
        steps=450,
        opt=_ADAM,
        focus="attn.qkv",
        focus_schedule=Schedule(3e-3, ramp_start=150, ramp_steps=200, peak=0.1),
        twin="gpt-qkv-ramp",
    ),
    RunSpec(
        "gpt-qkv-ramp-safe",
        STABLE,
        "gpt",
        "attn-logits",
        Schedule(3e-3),
        steps=450,
        opt=_ADAM,
        focus="attn.qkv",
        focus_schedule=Schedule(3e-3, ramp_start=150, ramp_steps=200, peak=0.03),
        twin="gpt-qkv-ramp",
    ),
    # --- output-logit growth without weight decay: only lm_head's learning rate ramps ---------
    RunSpec(
        "gpt-head-ramp",
        DIVERGENT,
        "gpt",
        "output-logits",
        Schedule(3e-3),
        steps=450,
        opt={"weight_decay": 0.0},
        focus="lm_head",
        focus_schedule=Schedule(3e-3, ramp_start=150, ramp_steps=200, peak=5.0),
        twin="gpt-head-ramp-safe",
    ),
    RunSpec(
        "gpt-head-ramp-safe",
        STABLE,
        "gpt",
        "output-logits",
        Schedule(3e-3),
        steps=450,
        opt={"weight_decay": 0.0},
        focus="lm_head",
        focus_schedule=Schedule(3e-3, ramp_start=150, ramp_steps=200, peak=1.0),
        twin="gpt-head-ramp",
    ),
    # --- SGD with momentum at a constant learning rate on the deep unnormalised MLP: no
    # schedule change at all; the curvature grows until the fixed step is too large ------------
    RunSpec(
        "mlp-sgd-const",
        DIVERGENT,
        "mlp",
        "sgd-sharpening",
        Schedule(0.25),
        steps=450,
        optimizer="sgd",
        opt=_SGD,
        twin="mlp-sgd-const-safe",
    ),
    RunSpec(
        "mlp-sgd-const-hi",
        DIVERGENT,
        "mlp",
        "sgd-sharpening",
        Schedule(0.3),
        steps=450,
        optimizer="sgd",
        opt=_SGD,
        twin="mlp-sgd-const-safe",
    ),
    RunSpec(
        "mlp-sgd-const-safe",
        STABLE,
        "mlp",
        "sgd-sharpening",
        Schedule(0.2),
        steps=450,
        optimizer="sgd",
        opt=_SGD,
        twin="mlp-sgd-const",
    ),
    RunSpec(
        "mlp-sgd-layernorm",
        DIVERGENT,
        "mlp",
        "sgd-momentum+layernorm",
        Schedule(0.01, ramp_start=200, ramp_steps=200, peak=3.0),
        optimizer="sgd",
        opt=_SGD,
        model={"norm": "layer"},
        twin="mlp-sgd-safe",
    ),
    RunSpec(
        "mlp-sgd-hold",
        STABLE,
        "mlp",
        "sgd-momentum",
        Schedule(0.02),
        optimizer="sgd",
        opt=_SGD,
        seed=2,
    ),
    RunSpec("gpt-lr-hold", STABLE, "gpt", "lr-edge", Schedule(5e-3), opt=_ADAM, seed=2),
    # --- the negative control: learning rate x10 at step 250 -----------------------------------
    RunSpec(
        "gpt-lr-x10",
        CONTROL,
        "gpt",
        "operator-mistake",
        Schedule(1e-2, jump_step=250, jump=10.0),
        opt=_ADAM,
        change_step=250,
    ),
]

BY_NAME = {spec.name: spec for spec in SUITE}


def build(spec: RunSpec) -> tuple[torch.nn.Module, Callable[[], tuple]]:
    """The seeded model and a function returning its next ``(input, target)`` batch."""
    torch.manual_seed(spec.seed)
    gen = torch.Generator().manual_seed(spec.seed)
    if spec.arch == "gpt":
        shape = {**GPT_SHAPE, **spec.model}
        model = GPT(GPTConfig(vocab_size=VOCAB_SIZE, **shape))
        corpus = TextCorpus(max_bytes=1_000_000)
        return model, lambda: corpus.batch(16, shape["block_size"], gen)
    if spec.arch == "mlp":
        shape = {**MLP_SHAPE, **spec.model}
        model = DeepMLP(MLPConfig(**shape))
        task = TeacherTask(d_in=shape["d_in"], n_classes=shape["n_classes"], seed=spec.seed)
        dtype = getattr(torch, spec.precision)
        model = model.to(dtype)

        def batch() -> tuple:
            x, y = task.batch(128, gen)
            return x.to(dtype), y

        return model, batch
    if spec.arch == "llama":
        shape = {**LLAMA_SHAPE, **spec.model}
        model = CausalLM.llama(vocab_size=VOCAB_SIZE, **shape)
        corpus = TextCorpus(max_bytes=1_000_000)
        return model, lambda: corpus.batch(16, shape["max_position_embeddings"], gen)
    raise ValueError(f"unknown arch {spec.arch!r}; valid: gpt, mlp, llama")


class CausalLM(torch.nn.Module):
    """A transformers causal language model behind the suite's ``model(x, y) -> loss``.

    Unlike the suite's GPT it measures no logit signal itself: the collector measures the
    largest attention logit (:mod:`collector.attention`) and the output ``log Z`` of such a
    model by itself on check steps.

    >>> model = CausalLM.llama(vocab_size=256, **LLAMA_SHAPE)  # doctest: +SKIP
    >>> loss = model(x, y)     # cross-entropy of the next byte   # doctest: +SKIP
    """

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def logit_signals(self) -> dict[str, torch.Tensor]:
        """None: the collector measures them by itself."""
        return {}

    @classmethod
    def llama(cls, **config) -> CausalLM:
        """A randomly initialised ``LlamaForCausalLM`` (made from its config: nothing is
        downloaded), output layer untied from the embedding, as the suite's GPT's."""
        from transformers import LlamaConfig, LlamaForCausalLM

        return cls(LlamaForCausalLM(LlamaConfig(tie_word_embeddings=False, **config)))

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.lm(input_ids=x).logits
        if targets is None:
            return logits
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def param_groups(spec: RunSpec, model: torch.nn.Module) -> list[dict]:
    """One group for the whole model, or two when ``spec.focus`` singles some parameters out;
    each group carries its ``schedule``."""
    params = list(model.named_parameters())
    if spec.focus is None:
        return [{"params": [p for _, p in params], "schedule": spec.schedule}]
    focused = [p for n, p in params if spec.focus in n]
    if not focused:
        raise ValueError(f"focus {spec.focus!r} matches no parameter")
    rest = [p for n, p in params if spec.focus not in n]
    return [
        {"params": rest, "schedule": spec.schedule},
        {"params": focused, "schedule": spec.focus_schedule or spec.schedule, **spec.focus_opt},
    ]


def optimizer(spec: RunSpec, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The run's optimizer at its first learning rate."""
    groups = param_groups(spec, model)
    for group in groups:
        group["lr"] = group["schedule"].at(0)
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(groups, **spec.opt)
    if spec.optimizer == "adam":
        return torch.optim.Adam(groups, **spec.opt)
    if spec.optimizer == "sgd":
        return torch.optim.SGD(groups, **spec.opt)
    raise ValueError(f"unknown optimizer {spec.optimizer!r}; valid: adamw, adam, sgd")


def objective(spec: RunSpec, model: torch.nn.Module, x, y) -> torch.Tensor:  # noqa: ANN001
    """Cross-entropy, plus the z-loss when ``spec.z_loss`` is on."""
    if not spec.z_loss:
        return model(x, y)
    logits = model(x)
    flat = logits.flatten(0, -2) if logits.ndim > 2 else logits
    ce = torch.nn.functional.cross_entropy(flat, y.flatten())
    return ce + spec.z_loss * torch.logsumexp(flat, dim=-1).pow(2).mean()


def train(
    spec: RunSpec,
    attach: Callable[[torch.nn.Module], Any] | None = None,
    inspect: Callable[[int, torch.nn.Module, torch.optim.Optimizer], Any] | None = None,
) -> list[float]:
    """Train ``spec`` on one thread; returns every step's loss (NaN and Inf included).

    ``attach(model)`` returns a monitor (e.g. ``lambda m: collector.watch(m, ...)``) whose
    ``log(step, loss=..., lr=...)`` is called after ``backward()`` and before the optimizer
    step; so is ``inspect(step, model, optimizer)`` when given. A run whose loss stays
    non-finite for 20 steps stops early: nothing more can be learned from it.

    >>> spec = RunSpec("t", STABLE, "mlp", "x", Schedule(1e-2), steps=3, optimizer="sgd")
    >>> len(train(spec))
    3
    """
    torch.set_num_threads(1)
    model, batches = build(spec)
    monitor = attach(model) if attach is not None else None
    opt = optimizer(spec, model)
    losses: list[float] = []
    for step in range(spec.steps):
        lr = spec.schedule.at(step)
        for group in opt.param_groups:
            group["lr"] = group["schedule"].at(step)
        x, y = batches()
        loss = objective(spec, model, x, y)
        loss.backward()
        if monitor is not None:
            monitor.log(step, loss=loss.detach(), lr=lr)
        if inspect is not None:
            inspect(step, model, opt)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if len(losses) >= 20 and not any(math.isfinite(v) for v in losses[-20:]):
            break
    return losses
