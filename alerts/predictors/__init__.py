"""Predictors: small named functions of a run's recent statistics, registered in a dict.

>>> from alerts.predictors import PREDICTORS, get_predictor
>>> sorted(PREDICTORS)
['attention_logits', 'diverging', 'grad_norm_spike', 'log_z_drift', 'loss_exploded', 'loss_spike', 'no_progress', 'non_finite', 'rank_collapse', 'sa_collapse', 'sa_growth', 'sa_shift', 'sigma_surge', 'stalled', 'update_size', 'weight_growth']
>>> get_predictor("sa_collapse").severity
'info'

Add one by writing ``fn(observation, memory, params) -> list[Verdict]`` (see
:mod:`alerts.predictors.base`) and registering a :class:`Predictor` in ``PREDICTORS``.
Default severities, switches and thresholds follow the prediction benchmark
(``python -m bench.prediction``, docs/benchmarks.md): predictors that cried wolf on its stable
near-edge runs (``sa_collapse``, ``weight_growth``, ``loss_spike``) are ``info`` — shown on the
dashboard, not sent by the default notifiers — and ``tripwire calibrate`` tightens any of them
per model. ``tripwire.toml`` overrides every setting per predictor.
"""

from __future__ import annotations

from alerts.predictors import gradients, logits, loss, non_finite, sa, stalled, together, weights
from alerts.predictors.base import Observation, Predictor, Verdict, finite

PREDICTORS: dict[str, Predictor] = {
    "sa_collapse": Predictor(
        "sa_collapse",
        sa.sa_collapse,
        severity="info",
        for_checks=3,
        params=sa.PARAMS,
        summary="SA signs of a layer collapse to one side, relative to that layer's normal",
        per_layer=True,
    ),
    "grad_norm_spike": Predictor(
        "grad_norm_spike",
        gradients.grad_norm_spike,
        severity="warning",
        for_checks=3,
        params=gradients.PARAMS,
        summary="global gradient norm far above its EMA (log z-score), persistently",
    ),
    "weight_growth": Predictor(
        "weight_growth",
        weights.weight_growth,
        severity="info",
        for_checks=2,
        params=weights.PARAMS,
        summary="a layer's sigma1 (or weight norm) grows faster than a set rate per step",
        per_layer=True,
    ),
    "loss_spike": Predictor(
        "loss_spike",
        loss.loss_spike,
        severity="info",
        for_checks=3,
        params=loss.PARAMS,
        summary="smoothed loss well above its running minimum",
    ),
    "sigma_surge": Predictor(
        "sigma_surge",
        together.sigma_surge,
        severity="warning",
        for_checks=2,
        params=together.SIGMA_PARAMS,
        summary="many layers' sigma1 grow fast at once (each against its own rate)",
    ),
    "diverging": Predictor(
        "diverging",
        together.diverging,
        severity="warning",
        for_checks=2,
        params=together.DIVERGING_PARAMS,
        summary="layers' sigma1 grow fast while the smoothed loss climbs off its minimum",
    ),
    "rank_collapse": Predictor(
        "rank_collapse",
        together.diverging,
        severity="warning",
        for_checks=2,
        params=together.RANK_PARAMS,
        summary="many layers' stable rank falls fast while the smoothed loss climbs off its minimum",
    ),
    "sa_shift": Predictor(
        "sa_shift",
        together.sa_shift,
        severity="warning",
        for_checks=2,
        params=together.SHIFT_PARAMS,
        summary="many layers' mean |SA| jump above their own history at once",
        enabled=False,
    ),
    "sa_growth": Predictor(
        "sa_growth",
        sa.sa_growth,
        severity="info",
        for_checks=3,
        params=sa.GROWTH_PARAMS,
        summary="a layer's SA signs collapse while its sigma1 grows fast",
        per_layer=True,
        enabled=False,
    ),
    "update_size": Predictor(
        "update_size",
        together.update_size,
        severity="info",
        for_checks=2,
        params=together.UPDATE_PARAMS,
        summary="many layers' update-to-weight ratio per step above a set level",
        enabled=False,
    ),
    "attention_logits": Predictor(
        "attention_logits",
        logits.attention_logits,
        severity="warning",
        for_checks=1,
        params=logits.ATTENTION_PARAMS,
        summary="the largest attention logit (logged as attn_logit_max) is high and multiplying",
    ),
    "log_z_drift": Predictor(
        "log_z_drift",
        logits.log_z_drift,
        severity="warning",
        for_checks=2,
        params=logits.LOG_Z_PARAMS,
        summary="the output log Z (logged as log_z) drifts away from its settled level",
    ),
    "loss_exploded": Predictor(
        "loss_exploded",
        loss.loss_exploded,
        severity="critical",
        for_checks=1,
        params=loss.EXPLODED_PARAMS,
        summary="the loss has exploded: its recent median is far above its best (not a forecast)",
    ),
    "non_finite": Predictor(
        "non_finite",
        non_finite.non_finite,
        severity="critical",
        for_checks=1,
        params=non_finite.PARAMS,
        summary="NaN or Inf in the loss or the weights (gradients when asked)",
    ),
    "stalled": Predictor(
        "stalled",
        stalled.stalled,
        severity="warning",
        for_checks=1,
        params=stalled.PARAMS,
        minimums=stalled.MINIMUMS,
        summary="a running run that stopped reporting (wall time; live only)",
        wall_time=True,
        resolve_after=1,
    ),
    "no_progress": Predictor(
        "no_progress",
        stalled.no_progress,
        severity="warning",
        for_checks=1,
        params=stalled.NO_PROGRESS_PARAMS,
        summary="a running run that still reports but logs no new step (wall time; live only)",
        wall_time=True,
        resolve_after=1,
    ),
}


INHIBITORS = ("non_finite", "loss_exploded")
"""Predictors that say the loss has already blown up: while one fires, the run's weaker
(non-critical) alerts are stored but not sent (forecasts of what already happened)."""

LIVE_ONLY = tuple(name for name, p in PREDICTORS.items() if p.wall_time)
"""Predictors that judge wall-clock time (``stalled``, ``no_progress``): live only."""


class UnknownPredictor(KeyError):
    """No predictor has this name; the message lists the valid ones."""

    def __str__(self) -> str:
        return self.args[0]


def get_predictor(name: str) -> Predictor:
    """The registered predictor ``name``.

    >>> get_predictor("sa_colapse")
    Traceback (most recent call last):
    ...
    alerts.predictors.UnknownPredictor: unknown predictor 'sa_colapse'; valid: attention_logits, diverging, grad_norm_spike, log_z_drift, loss_exploded, loss_spike, no_progress, non_finite, rank_collapse, sa_collapse, sa_growth, sa_shift, sigma_surge, stalled, update_size, weight_growth
    """
    try:
        return PREDICTORS[name]
    except KeyError:
        valid = ", ".join(sorted(PREDICTORS))
        raise UnknownPredictor(f"unknown predictor {name!r}; valid: {valid}") from None


__all__ = [
    "PREDICTORS",
    "Observation",
    "Predictor",
    "UnknownPredictor",
    "Verdict",
    "finite",
    "get_predictor",
]
