"""The logit signals a user logs beside the loss: the largest attention logit and the output ``log Z``.

The collector cannot see inside a fused attention kernel, so these two come from the model, the
way a user of W&B or MLflow logs a custom metric: ``monitor.log(step, loss=loss,
attn_logit_max=..., log_z=...)`` on check steps (docs/alerts.md). The benchmark records them
that way; :class:`Probe` measures them with forward hooks on the suite's two models, with the
collector's helpers (``collector.attention_logit_max``, ``collector.log_z``).
"""

from __future__ import annotations

import torch

from collector.logits import attention_logit_max, log_z


class Probe:
    """Forward hooks recording the largest attention and output logits of the last forward."""

    def __init__(self, model: torch.nn.Module):
        self.attn = 0.0
        self.out_max = 0.0
        self.log_z = 0.0
        self.has_attention = False
        for name, module in model.named_modules():
            if name.endswith("attn.qkv"):
                heads = model.cfg.n_head
                norm_q = model.get_submodule(name.rsplit(".", 1)[0]).q_norm
                norm_k = model.get_submodule(name.rsplit(".", 1)[0]).k_norm
                module.register_forward_hook(self._attention(heads, norm_q, norm_k))
                self.has_attention = True
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
                self.attn = max(self.attn, attention_logit_max(q, k).item())

        return hook

    def _output(self, module, args, out):  # noqa: ANN001, ARG002
        with torch.no_grad():
            self.out_max = out.float().abs().max().item()
            self.log_z = log_z(out).item()

    def scalars(self) -> dict[str, float]:
        """What the last step's forward passes measured, named as the predictors expect."""
        out = {"log_z": self.log_z}
        if self.has_attention:
            out["attn_logit_max"] = self.attn
        return out
