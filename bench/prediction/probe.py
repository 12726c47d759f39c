"""Check that a suite run explodes by the mechanism it is named after (not used for scoring).

``python -m bench.prediction.probe NAME [NAME ...]`` trains each run without the collector and
prints, every 10 steps, the loss, the largest attention logit ``q·k/sqrt(d_head)`` over all
heads and positions (GPT), and the largest output logit and mean log-partition ``log Z`` of
the output layer, then the explosion step. Attention-logit runs must show the attention logits
grow before the explosion (and stay bounded in their qk-norm twin); output-logit runs must show
the output logits / ``log Z`` grow.
"""

from __future__ import annotations

import sys

from bench.prediction.runs import BY_NAME, RunSpec, train
from bench.prediction.signals import Probe
from tripwire.demo_training import explosion_step


def probe(spec: RunSpec) -> None:
    rows = []

    class Monitor:
        def __init__(self, model):  # noqa: ANN001
            self.p = Probe(model)

        def log(self, step, loss, lr):  # noqa: ANN001
            if step % 10 == 0:
                rows.append((step, loss.item(), lr, self.p.attn, self.p.out_max, self.p.log_z))
            self.p.attn = 0.0

    losses = train(spec, Monitor)
    print(f"{spec.name}: explodes at {explosion_step(losses)} of {len(losses)}")
    print("step   loss     lr      max_attn_logit  max_out_logit  logZ")
    for r in rows:
        print(f"{r[0]:4d} {r[1]:8.3f} {r[2]:8.4f} {r[3]:14.2f} {r[4]:14.2f} {r[5]:8.2f}")


if __name__ == "__main__":
    for name in sys.argv[1:]:
        probe(BY_NAME[name])
