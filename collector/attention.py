"""The largest attention logit of Hugging Face attention modules, measured on check steps.

transformers computes attention inside fused kernels that no hook sees into. On a check step
one-shot hooks on each supported attention module take its queries and keys where they are
made and keep the largest ``|q·k| × scaling`` of the scores. Supported:

- modules with ``q_proj``/``k_proj`` projections (plain or LoRA-wrapped) or one ``qkv_proj``
  (Phi-3), ``head_dim``, ``scaling`` and a ``position_embeddings`` argument — Llama, Mistral,
  Mixtral, Qwen2, Gemma, Granite, Phi-3 and the many models built like them: the projections'
  outputs, rotated with the ``apply_rotary_pos_emb`` of the module's own modelling file;
- GPT-2's self-attention (one ``c_attn`` projection to queries, keys and values, learned
  positions): the first two thirds of ``c_attn``'s output.

Left out: qk-norm (``q_norm``/``k_norm``: Qwen3, OLMo 2) and logit soft-capping (Gemma 2), the
cures for the growth this signal watches; a rotary embedding on part of each head applied
outside that function (Phi, StableLM); a rotary function of another signature (GPT-J); other
fused projections (GPT-NeoX, GPT-BigCode, Falcon).

>>> probe = AttentionLogitMax(attention_modules(model))   # doctest: +SKIP
>>> probe.arm(); model(x); probe.take()                    # tensor(14.2)
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Callable
from functools import partial

import torch
from torch import nn

SCORE_BUDGET = 1 << 24
"""Attention scores computed at once at most (64 MiB in fp32): long sequences are measured in
chunks of queries, and a large batch on its first sequences only."""

log = logging.getLogger(__name__)


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The attention modules of ``model`` whose largest logit :class:`AttentionLogitMax` can
    measure (see the module's docstring), in model order."""
    return [m for m in model.modules() if _supported(m)]


def _supported(module: nn.Module) -> bool:
    return _rotary_kind(module) or _gpt2_kind(module)


def _rotary_kind(module: nn.Module) -> bool:
    projections = (getattr(module, "q_proj", None), getattr(module, "k_proj", None))
    return (
        (all(isinstance(p, nn.Module) for p in projections) or _fused_qkv(module) is not None)
        and isinstance(getattr(module, "head_dim", None), int)
        and isinstance(getattr(module, "scaling", None), float)
        and _rotary(module) is not None
        and _rotary_position(module) is not None
        and not any(hasattr(module, a) for a in ("q_norm", "k_norm", "rotary_ndims"))
        and getattr(getattr(module, "config", None), "attn_logit_softcapping", None) is None
    )


def _fused_qkv(module: nn.Module) -> tuple[int, int] | None:
    """Where the keys start and end in the output of a ``qkv_proj`` (Phi-3), or None."""
    heads = getattr(getattr(module, "config", None), "num_attention_heads", None)
    kv_heads, head_dim = (
        getattr(module, "num_key_value_heads", None),
        getattr(module, "head_dim", 0),
    )
    if not isinstance(getattr(module, "qkv_proj", None), nn.Module):
        return None
    if not (isinstance(heads, int) and isinstance(kv_heads, int) and isinstance(head_dim, int)):
        return None
    return heads * head_dim, (heads + kv_heads) * head_dim


def _gpt2_kind(module: nn.Module) -> bool:
    c_attn, split = getattr(module, "c_attn", None), getattr(module, "split_size", None)
    return (
        isinstance(c_attn, nn.Module)
        and isinstance(split, int)
        and getattr(c_attn, "nf", getattr(c_attn, "out_features", None)) == 3 * split
        and isinstance(getattr(module, "head_dim", None), int)
        and isinstance(getattr(module, "scaling", None), float)
        and not getattr(module, "is_cross_attention", False)
    )


def _rotary_position(module: nn.Module) -> int | None:
    """Where ``position_embeddings`` comes in the module's ``forward`` arguments, or None."""
    try:
        names = list(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return None
    return names.index("position_embeddings") if "position_embeddings" in names else None


def _rotary(module: nn.Module):  # noqa: ANN202
    """The ``apply_rotary_pos_emb(q, k, cos, sin, ...)`` of the module's modelling file, if it
    has one of that signature (GPT-J's, ``(tensor, sin, cos)``, is another thing)."""
    rotate = getattr(sys.modules.get(type(module).__module__), "apply_rotary_pos_emb", None)
    try:
        names = list(inspect.signature(rotate).parameters)[:4]
    except (TypeError, ValueError):
        return None
    return rotate if names == ["q", "k", "cos", "sin"] else None


@torch.no_grad()
def module_logit_max(
    module: nn.Module,
    queries: torch.Tensor,
    keys: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor] | None,
    budget: int = SCORE_BUDGET,
) -> torch.Tensor:
    """Largest ``|q·k| × scaling`` of a supported attention module's forward pass, from its
    queries and keys as projected (batch, tokens, heads × head_dim) and the rotary embedding
    passed to it (None: none): over its heads and every query–key pair (masked ones too: an
    upper bound that needs no mask), on as many of the first sequences as fit in ``budget``
    scores at once (at least one, in chunks of queries). A 0-dim fp32 tensor on the input's
    device.
    """
    batch, tokens = queries.shape[:2]
    head_dim = module.head_dim
    heads, kv_heads = queries.shape[-1] // head_dim, keys.shape[-1] // head_dim
    n = max(1, min(batch, budget // (heads * tokens * tokens)))
    q, k = (z[:n].reshape(n, tokens, -1, head_dim).transpose(1, 2) for z in (queries, keys))
    if position_embeddings is not None:
        cos, sin = (e[:n] if e.shape[0] == batch else e for e in position_embeddings)
        q, k = _rotary(module)(q, k, cos, sin)
    # Grouped-query attention: query heads j·g … j·g+g−1 read key head j.
    q = q.float().reshape(n, kv_heads, heads // kv_heads, tokens, head_dim)
    k_t = k.float().transpose(-2, -1).unsqueeze(2)  # (n, kv_heads, 1, head_dim, tokens)
    chunk = max(1, budget // (n * heads * tokens))
    best = torch.zeros((), device=queries.device)
    for start in range(0, tokens, chunk):
        low, high = torch.aminmax(q[..., start : start + chunk, :] @ k_t)
        best = torch.maximum(best, torch.maximum(high, -low))
    return best * module.scaling


class AttentionLogitMax:
    """One-shot hooks on attention modules: the largest attention logit of the first forward
    pass after ``arm()`` over all of them, kept on the device until ``take()``.

    Per rotary module, a forward pre-hook takes the rotary embedding passed to it and forward
    hooks on its ``q_proj`` and ``k_proj`` (or ``qkv_proj``) take their outputs; per GPT-2
    module a forward hook on ``c_attn`` takes its output (nothing is computed twice). A module
    that cannot be measured (no rotary embedding passed, projections not called) is logged once
    and left alone from then on; nothing raises into the forward pass.
    """

    def __init__(self, modules: list[nn.Module], budget: int = SCORE_BUDGET):
        self.modules = list(modules)
        self.budget = budget
        self._handles: dict[int, list[torch.utils.hooks.RemovableHandle]] = {}
        self._parts: dict[int, dict[str, object]] = {}
        self._maxima: list[torch.Tensor] = []
        self._failed: set[int] = set()
        self._registrations = [self._plan(i, m) for i, m in enumerate(self.modules)]

    def arm(self) -> None:
        """Register the hooks for the next forward pass (idempotent)."""
        for i, registrations in enumerate(self._registrations):
            if i not in self._handles and i not in self._failed:
                self._handles[i] = [register() for register in registrations]

    def _plan(self, index: int, module: nn.Module) -> list[Callable[[], object]]:
        """The hook registrations ``arm()`` makes for one module: its kind found once."""
        if _gpt2_kind(module):
            return [partial(module.c_attn.register_forward_hook, self._fused_hook(index))]
        rotary = self._rotary_hook(index)
        first = partial(module.register_forward_pre_hook, rotary, with_kwargs=True)
        if _fused_qkv(module) is not None:
            return [first, partial(module.qkv_proj.register_forward_hook, self._qkv_hook(index))]
        return [
            first,
            partial(module.q_proj.register_forward_hook, self._projection_hook(index, "q")),
            partial(module.k_proj.register_forward_hook, self._projection_hook(index, "k")),
        ]

    def disarm(self) -> None:
        for handles in self._handles.values():
            for handle in handles:
                handle.remove()
        self._handles.clear()
        self._parts.clear()

    def take(self) -> torch.Tensor | None:
        """The largest logit measured since ``arm()`` (None if no module ran); forgets it."""
        for i in [i for i, parts in self._parts.items() if "rotary" in parts]:
            self._fail(i, "its q_proj and k_proj did not run inside it")
        maxima, self._maxima = self._maxima, []
        self.disarm()
        return torch.stack(maxima).amax() if maxima else None

    def discard(self) -> None:
        self._maxima.clear()
        self.disarm()

    def _rotary_hook(self, index: int):  # noqa: ANN202
        position = _rotary_position(self.modules[index])

        def hook(module, args, kwargs) -> None:  # noqa: ANN001, ARG001
            rotary = kwargs.get("position_embeddings")
            if rotary is None and len(args) > position:
                rotary = args[position]
            if rotary is None:
                self._fail(index, "no rotary embedding passed to it")
            else:
                self._parts[index] = {"rotary": rotary}

        return hook

    def _projection_hook(self, index: int, name: str):  # noqa: ANN202
        def hook(projection, inputs, output) -> None:  # noqa: ANN001, ARG001
            parts = self._parts.get(index)
            if parts is None:  # called outside the attention module's forward
                return
            parts[name] = output
            if "q" in parts and "k" in parts:
                del self._parts[index]
                self._measure(index, parts["q"], parts["k"], parts["rotary"])

        return hook

    def _qkv_hook(self, index: int):  # noqa: ANN202
        keys_at, keys_end = _fused_qkv(self.modules[index])

        def hook(qkv_proj, inputs, output) -> None:  # noqa: ANN001, ARG001
            parts = self._parts.pop(index, None)
            if parts is not None:  # else called outside the attention module's forward
                queries, keys = output[..., :keys_at], output[..., keys_at:keys_end]
                self._measure(index, queries, keys, parts["rotary"])

        return hook

    def _fused_hook(self, index: int):  # noqa: ANN202
        def hook(c_attn, inputs, output) -> None:  # noqa: ANN001, ARG001
            split = self.modules[index].split_size
            self._measure(index, output[..., :split], output[..., split : 2 * split], None)

        return hook

    def _measure(self, index: int, queries, keys, rotary) -> None:  # noqa: ANN001
        self._remove(index)
        try:
            self._maxima.append(
                module_logit_max(self.modules[index], queries, keys, rotary, self.budget)
            )
        except Exception as exc:  # never into the training loop
            self._fail(index, str(exc))

    def _remove(self, index: int) -> None:
        for handle in self._handles.pop(index, []):
            handle.remove()

    def _fail(self, index: int, why: str) -> None:
        self._failed.add(index)
        self._parts.pop(index, None)
        self._remove(index)
        log.warning(
            "tripwire: cannot measure the attention logits of %s (%s); left out",
            type(self.modules[index]).__name__,
            why,
        )
