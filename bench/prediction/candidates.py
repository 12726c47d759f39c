"""The formulations the benchmark explores, each a registered predictor with its parameters.

Every candidate is scored alone, through the same backtest as ``tripwire evaluate``, with a
``tripwire.toml``-style override (so any row here can be reproduced by a user's config).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from alerts.config import Config, parse_config
from alerts.predictors import PREDICTORS


@dataclass(frozen=True)
class Candidate:
    """One formulation: a predictor, its parameter overrides and persistence."""

    label: str
    predictor: str
    params: dict = field(default_factory=dict)
    for_checks: int | None = None
    note: str = ""

    def config(self) -> Config:
        """A config that evaluates this candidate only."""
        rules: dict = {n: {"enabled": False} for n in PREDICTORS}
        rule = {"enabled": True, **self.params}
        if self.for_checks:
            rule["for_checks"] = self.for_checks
        rules[self.predictor] = rule
        return parse_config({"predictors": rules})


def _shipped(rule: str, *keys: str) -> tuple:
    """The shipped defaults of ``rule``'s parameters ``keys``, to mark its candidate in the table."""
    return tuple(PREDICTORS[rule].params[k] for k in keys)


_DIV = _shipped("diverging", "max_rate", "min_layers", "min_loss_rise")
_DIV_EAGER = (0.01, 0.1, 0.2)
"""The eager rule set's ``diverging`` setting (rate, fraction of layers, nats)."""
_ATTENTION_LEVEL = 50.0
"""The eager rule set's ``attention_logits`` level (the level alone, 2 checks in a row)."""
_ATTENTION_GROWTH = _shipped("attention_logits", "min_growth", "growth_steps")
_RANK = _shipped("rank_collapse", "max_rate", "min_layers", "min_loss_rise")

TUNED = {
    "diverging": "diverging",
    "rank_collapse": "rank_collapse",
    "attention_logits": "attention growth",
}
"""The rules of the default set whose settings were chosen on this suite, each with the label
prefix of its candidates; the held-out score (``heldout.py``) re-chooses them among those
candidates without the scored mechanism."""
EAGER = {
    "attention_logits": {"min_growth": 0.0, "for_checks": 2},
    "diverging": {"min_layers": _DIV_EAGER[1], "min_loss_rise": _DIV_EAGER[2]},
    "rank_collapse": {"enabled": False},
}
"""The eager rule set (``[predictors]`` of a ``tripwire.toml``; the defaults until 2026-11-29),
for teams that would rather be paged early and sometimes for nothing: the attention logit's
level alone, and ``diverging`` in 10 % of the layers at 0.2 nat."""
EAGER_TUNED = {"diverging": "diverging", "attention_logits": "attention_logits"}
"""The same for the eager rule set (its attention rule chosen among the level candidates)."""


def _mark(setting, default, eager) -> str:  # noqa: ANN001
    """The label suffix naming the rule set that ships ``setting``, if one does."""
    return " (default)" if setting == default else " (eager)" if setting == eager else ""


CANDIDATES: list[Candidate] = [
    # --- SA level (the textbook statistic) and its variants -----------------------------------
    Candidate("sa_collapse (default)", "sa_collapse", note="D against the layer's own baseline"),
    Candidate(
        "sa_collapse strict",
        "sa_collapse",
        {"excess": 0.8, "min_imbalance": 0.9, "min_headroom": 0.3},
        for_checks=5,
        note="D ≥ 0.9 using 80% of the headroom, 5 checks in a row",
    ),
    *[
        Candidate(
            f"sa_growth {rate:.1%}",
            "sa_growth",
            {"max_rate": rate},
            note="SA collapse and σ1 growth in the same layer at once",
        )
        for rate in (0.002, 0.005, 0.01)
    ],
    Candidate(
        "sa_collapse centred",
        "sa_collapse",
        {"stat": "sa_c_imbalance"},
        note="D of the inputs centred per batch, against the layer's baseline",
    ),
    Candidate(
        "sa_shift centred mean abs SA",
        "sa_shift",
        {"stat": "sa_c_abs_mean"},
        note="mean |SA| of centred inputs jumps above own history, ≥30% of layers",
    ),
    Candidate(
        "sa_shift centred D",
        "sa_shift",
        {"stat": "sa_c_imbalance", "min_sd": 0.05},
        note="D of centred inputs jumps above own history, ≥30% of layers",
    ),
    Candidate(
        "sa_shift mean abs SA",
        "sa_shift",
        {"stat": "sa_abs_mean"},
        note="mean |SA| jumps above own history, ≥30% of layers",
    ),
    Candidate(
        "sa_shift D",
        "sa_shift",
        {"stat": "sa_imbalance", "min_sd": 0.05},
        note="imbalance D jumps above own history, ≥30% of layers",
    ),
    Candidate(
        "sa_shift v_drift",
        "sa_shift",
        {"stat": "v_drift"},
        note="speed of v1 rotation above own history",
    ),
    Candidate(
        "sa_shift act_max",
        "sa_shift",
        {"stat": "act_max", "min_sd": 0.1},
        note="max activation above own history",
    ),
    # --- weights / spectrum -------------------------------------------------------------------
    Candidate("weight_growth (default)", "weight_growth", note="any one layer's σ1 > 1%/step"),
    Candidate("weight_growth 2%", "weight_growth", {"max_rate": 0.02}),
    Candidate(
        "sigma_surge 0.5%/50%",
        "sigma_surge",
        {"max_rate": 0.005},
        note="σ1 > 0.5%/step in ≥50% of layers",
    ),
    Candidate("sigma_surge 1%/50% (default)", "sigma_surge", {"max_rate": 0.01}),
    Candidate("sigma_surge 0.5%/30%", "sigma_surge", {"max_rate": 0.005, "min_layers": 0.3}),
    Candidate("sigma_surge 0.3%/70%", "sigma_surge", {"max_rate": 0.003, "min_layers": 0.7}),
    # --- stable rank (‖W‖_F² / σ1²) falling: the spectrum collapsing onto one direction ----------
    *[
        Candidate(
            f"stable rank falls {rate:.1%}/{frac:.0%}",
            "sigma_surge",
            {"stat": "stable_rank", "falling": True, "max_rate": rate, "min_layers": frac},
            note="stable rank falls faster than the rate in ≥ the fraction of layers",
        )
        for rate, frac in ((0.002, 0.5), (0.005, 0.3), (0.005, 0.5), (0.01, 0.1))
    ],
    *[
        Candidate(
            f"rank_collapse {r:.1%}/{f:.0%}/{d:g} nat" + _mark((r, f, d), _RANK, None),
            "rank_collapse",
            {"max_rate": r, "min_layers": f, "min_loss_rise": d},
        )
        for r in (0.002, 0.005)
        for f in (0.3, 0.5)
        for d in (0.1, 0.2)
    ],
    *[
        Candidate(
            f"sa_growth stable rank {rate:.1%}",
            "sa_growth",
            {"growth_stat": "stable_rank", "growth_falling": True, "max_rate": rate},
            note="SA collapse and stable-rank fall in the same layer at once",
        )
        for rate in (0.002, 0.005)
    ],
    # --- σ1 surge gated on the loss climbing off its minimum ------------------------------------
    *[
        Candidate(
            f"diverging {r:.1%}/{f:.0%}/{d:g} nat" + _mark((r, f, d), _DIV, _DIV_EAGER),
            "diverging",
            {"max_rate": r, "min_layers": f, "min_loss_rise": d},
        )
        for r in (0.003, 0.01)
        for f in (0.1, 0.5)
        for d in (0.1, 0.2, 0.3)
    ],
    # --- cheap non-SA signals ------------------------------------------------------------------
    Candidate("grad_norm_spike (default)", "grad_norm_spike"),
    Candidate("loss_spike (default)", "loss_spike", note="EMA loss 30% above its minimum"),
    Candidate("loss_spike 10%", "loss_spike", {"rel_increase": 0.1}),
    Candidate("loss_spike 50%", "loss_spike", {"rel_increase": 0.5}),
    Candidate("loss_spike 0.2 nat", "loss_spike", {"rel_increase": 0.0, "min_increase": 0.2}),
    # --- logit signals the loop logs (attention logits: GPT runs only) -------------------------
    *[
        Candidate(
            f"attention_logits {level:g}" + _mark(level, None, _ATTENTION_LEVEL),
            "attention_logits",
            {"max_logit": level, "min_growth": 0.0},
            for_checks=2,
            note="largest q·k/√d above a level, 2 checks in a row",
        )
        for level in (25.0, 50.0, 100.0, 200.0)
    ],
    Candidate(
        "attention_logits 50, 1 check", "attention_logits", {"min_growth": 0.0}, for_checks=1
    ),
    *[
        Candidate(
            f"attention growth ×{growth:g} in {steps} steps"
            + _mark((growth, steps), _ATTENTION_GROWTH, None),
            "attention_logits",
            {"min_growth": growth, "growth_steps": steps},
            for_checks=1,
            note="largest q·k/√d above 50 and growing that much, 1 check",
        )
        for growth in (5.0, 10.0)
        for steps in (30, 50)
    ],
    Candidate("log_z_drift 2 nat", "log_z_drift", {"max_drift": 2.0}),
    Candidate("log_z_drift 5 nat (default)", "log_z_drift"),
    # --- update-to-weight ratio (collector statistic) -----------------------------------------
    Candidate("update_size 1e-2/50% (default)", "update_size"),
    Candidate("update_size 3e-2/50%", "update_size", {"max_ratio": 0.03}),
    Candidate("update_size 1e-2/10%", "update_size", {"min_layers": 0.1}),
    Candidate(
        "update_ratio shift",
        "sa_shift",
        {"stat": "update_ratio", "min_sd": 0.001},
        note="update ratio jumps above own history, ≥30% of layers",
    ),
]
