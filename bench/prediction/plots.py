"""Figures of a few runs: the loss with each predictor's first alert, the SA heatmap, and the
largest attention logit where the run logged it.

Needs matplotlib (``pip install matplotlib``); the benchmark skips the figures without it.
"""

from __future__ import annotations

from pathlib import Path

from alerts.backtest import BacktestAlert
from alerts.predictors import PREDICTORS
from storage import stats
from storage.db import Database

IMG = Path(__file__).resolve().parents[2] / "docs" / "img"


def loss_and_sa(
    db: Database,
    run_id: int,
    name: str,
    losses: list[float],
    explosion: int | None,
    alerts: list[BacktestAlert],
    out: Path,
) -> Path:
    """Loss with first alerts marked; SA imbalance D as a layer × step heatmap; and, when the run
    logged ``attn_logit_max``, the largest attention logit against the default rule's level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = stats.layer_stats(db, run_id, with_hist=False)
    layers = sorted({r.layer for r in rows}, key=[r.layer for r in rows].index)
    steps = sorted({r.step for r in rows})
    grid = np.full((len(layers), len(steps)), np.nan)
    for r in rows:
        if r.sa_imbalance is not None:
            grid[layers.index(r.layer), steps.index(r.step)] = r.sa_imbalance

    attention = [
        (p.step, p.value)
        for p in stats.scalar_series(db, run_id, ["attn_logit_max"])
        if p.value is not None and p.value == p.value
    ]
    panels = 3 if attention else 2
    fig, axes = plt.subplots(panels, 1, figsize=(8, 2.6 * panels), sharex=True, dpi=80)
    ax1, ax2 = axes[0], axes[1]
    finite = [x if x == x and abs(x) < 1e6 else np.nan for x in losses]
    ax1.plot(range(len(finite)), finite, lw=0.8, color="0.3", label="loss")
    top = np.nanmax(finite[: (explosion or len(finite)) + 40]) if finite else 1
    ax1.set_ylim(np.nanmin(finite) * 0.9, min(top, np.nanmin(finite) + 4))
    firsts: dict[str, int] = {}
    for a in alerts:
        firsts.setdefault(a.predictor, a.step)
    colors = plt.get_cmap("tab10")
    for i, (pred, step) in enumerate(sorted(firsts.items(), key=lambda kv: kv[1])):
        ax1.axvline(step, color=colors(i), lw=1.2, ls="--", label=f"{pred} @{step}")
    if explosion is not None:
        ax1.axvline(explosion, color="red", lw=2, label=f"explosion @{explosion}")
    ax1.set_ylabel("loss (nats)")
    ax1.set_title(name)
    ax1.legend(fontsize=7, loc="upper left", ncol=2)
    ax2.imshow(
        grid,
        aspect="auto",
        cmap="viridis",
        vmin=0,
        vmax=1,
        interpolation="nearest",
        extent=(steps[0] - 5, steps[-1] + 5, len(layers) - 0.5, -0.5),
    )
    ax2.set_yticks(range(len(layers)), layers, fontsize=7)
    ax2.set_xlabel("step")
    ax2.set_title("SA imbalance D per layer (0 mixed signs, 1 one sign)", fontsize=9)
    if explosion is not None:
        ax2.axvline(explosion, color="red", lw=1.5)
    if attention:
        ax3 = axes[2]
        ax3.semilogy([s for s, _ in attention], [v for _, v in attention], color="0.3", lw=1)
        params = PREDICTORS["attention_logits"].params
        label = f"attention_logits level {params['max_logit']:g}"
        if params["min_growth"]:
            label += f" (and ×{params['min_growth']:g} in {params['growth_steps']} steps)"
        ax3.axhline(params["max_logit"], color="tab:orange", ls="--", lw=1, label=label)
        if explosion is not None:
            ax3.axvline(explosion, color="red", lw=1.5)
        ax3.set_ylabel("max q·k/√d")
        ax3.legend(fontsize=7, loc="upper left")
        ax3.set_xlabel("step")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
