"""Check that a suite run explodes by the mechanism it is named after (not used for scoring).

``python -m bench.prediction.probe NAME [NAME ...]`` trains each run without the collector and
prints, every 10 steps, the loss, the largest attention logit ``q·k/sqrt(d_head)`` over all
heads and positions (GPT), and the largest output logit and mean log-partition ``log Z`` of
the output layer, then the explosion step. Attention-logit runs must show the attention logits
grow before the explosion (and stay bounded in their qk-norm twin); output-logit runs must show
the output logits / ``log Z`` grow.

It also prints two edge-of-stability diagnostics the collector does not record, each the median
over the 10 steps: the cosine between consecutive gradients (all parameters), which turns
negative when the step oscillates across a sharp valley, and ``lr × (g_t − g_{t−1})·Δθ / |Δθ|²``,
the learning rate times the curvature along the last update.
"""

from __future__ import annotations

import statistics

import torch

from bench.common import command_parser
from bench.prediction.runs import BY_NAME, RunSpec, train
from tripwire.demo_training import explosion_step


def probe(spec: RunSpec) -> None:
    rows, window = [], []

    class Monitor:
        def __init__(self, model):  # noqa: ANN001
            model.measure_logits = True
            self.model = model
            self.out_max = 0.0
            output = model.lm_head if hasattr(model, "lm_head") else model.head
            output.register_forward_hook(self._output)
            self.before: tuple[torch.Tensor, torch.Tensor] | None = None

        def _output(self, module, args, out):  # noqa: ANN001, ARG002
            self.out_max = out.detach().float().abs().max().item()

        def log(self, step, loss, lr):  # noqa: ANN001
            params = list(self.model.parameters())
            grad = torch.cat([p.grad.flatten() for p in params])
            weights = torch.cat([p.detach().flatten() for p in params])
            if self.before is not None:
                g0, w0 = self.before
                moved = weights - w0
                cos = torch.nn.functional.cosine_similarity(grad, g0, dim=0).item()
                curvature = ((grad - g0) @ moved / (moved @ moved)).item()
                window.append((cos, lr * curvature))
            self.before = (grad.clone(), weights.clone())
            if step % 10 == 0:
                cos = statistics.median(c for c, _ in window) if window else float("nan")
                sharp = statistics.median(s for _, s in window) if window else float("nan")
                signals = {k: float(v) for k, v in self.model.logit_signals().items()}
                attn, z = signals.get("attn_logit_max", float("nan")), signals["log_z"]
                rows.append((step, loss.item(), lr, attn, self.out_max, z, cos, sharp))
                window.clear()

    losses = train(spec, Monitor)
    print(f"{spec.name}: explodes at {explosion_step(losses)} of {len(losses)}")
    print("step   loss     lr      max_attn_logit  max_out_logit  logZ   grad_cos  lr*curv")
    for r in rows:
        print(
            f"{r[0]:4d} {r[1]:8.3f} {r[2]:8.4f} {r[3]:14.2f} {r[4]:14.2f} {r[5]:8.2f}"
            f" {r[6]:+8.2f} {r[7]:8.2f}"
        )


if __name__ == "__main__":
    parser = command_parser("bench.prediction.probe", __doc__)
    parser.add_argument("runs", nargs="+", metavar="RUN", choices=sorted(BY_NAME))
    for name in parser.parse_args().runs:
        probe(BY_NAME[name])
