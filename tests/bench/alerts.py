"""Backtest alerts made by hand, for the tests of how the benchmark judges them."""

from __future__ import annotations

from alerts.backtest import BacktestAlert


def backtest_alert(
    step: int, resolved: int | None = None, *, rule: str = "sigma_surge", layer: str | None = None
) -> BacktestAlert:
    """An alert of ``rule`` that fired at ``step`` and resolved at ``resolved`` (None: open)."""
    return BacktestAlert("r", "u", rule, "warning", step, layer, "", 1.0, step, resolved, 2.0)
