"""Check that a suite run explodes by the mechanism it is named after (not used for scoring).

``python -m bench.prediction.probe NAME [NAME ...]`` trains each run without the collector and
prints, every 10 steps, the loss, the largest attention logit ``q·k/sqrt(d_head)`` over all
heads and positions (GPT), and the largest output logit and mean log-partition ``log Z`` of
the output layer, then the explosion step. Attention-logit runs must show the attention logits
grow before the explosion (and stay bounded in their qk-norm twin); output-logit runs must show
the output logits / ``log Z`` grow.
"""

from __future__ import annotations

import math
import sys

import torch

from bench.prediction.runs import BY_NAME, RunSpec, train
from tripwire.demo_training import explosion_step


class Probe:
    """Forward hooks recording the largest attention and output logits of the last forward."""

    def __init__(self, model: torch.nn.Module):
        self.attn = 0.0
        self.out_max = 0.0
        self.log_z = 0.0
        for name, module in model.named_modules():
            if name.endswith("attn.qkv"):
                heads = model.cfg.n_head
                norm_q = model.get_submodule(name.rsplit(".", 1)[0]).q_norm
                norm_k = model.get_submodule(name.rsplit(".", 1)[0]).k_norm
                module.register_forward_hook(self._attention(heads, norm_q, norm_k))
            if name in ("lm_head", "head"):
                module.register_forward_hook(self._output)

    def _attention(self, heads, norm_q, norm_k):  # noqa: ANN001, ANN202
        def hook(module, args, out):  # noqa: ANN001, ARG001
            with torch.no_grad():
                b, t, d3 = out.shape
                d = d3 // 3
                q, k, _ = out.float().split(d, dim=2)
                q = norm_q(q.view(b, t, heads, d // heads).transpose(1, 2))
                k = norm_k(k.view(b, t, heads, d // heads).transpose(1, 2))
                scores = q @ k.transpose(-1, -2) / math.sqrt(d // heads)
                self.attn = max(self.attn, scores.abs().max().item())

        return hook

    def _output(self, module, args, out):  # noqa: ANN001, ARG002
        with torch.no_grad():
            self.out_max = out.float().abs().max().item()
            self.log_z = torch.logsumexp(out.float(), dim=-1).mean().item()


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
