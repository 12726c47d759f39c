"""Small models for the demo and the prediction benchmark: a GPT and a deep MLP.

Module names are shown to users as layer names (``blocks.0.attn.qkv``, ``layers.3.fc``), so they
are kept short and readable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from collector.logits import attention_logit_max, log_z


@dataclass
class GPTConfig:
    """Shape and stability knobs of the small GPT."""

    vocab_size: int = 256
    """Number of token ids (256 for the byte-level corpus)."""
    block_size: int = 64
    """Longest context, in tokens."""
    n_layer: int = 4
    """Number of transformer blocks."""
    n_head: int = 4
    """Attention heads per block; must divide ``d_model``."""
    d_model: int = 128
    """Width of the residual stream; the MLP is 4x wider."""
    bias: bool = True
    """Bias in the linear layers and LayerNorms."""
    qk_norm: bool = False
    """LayerNorm on each head's queries and keys, which bounds the attention logits."""
    tie_weights: bool = False
    """Share the token embedding with ``lm_head``."""


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.d_model % cfg.n_head:
            raise ValueError(f"d_model ({cfg.d_model}) must be divisible by n_head ({cfg.n_head})")
        self.n_head = cfg.n_head
        head_dim = cfg.d_model // cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.q_norm = nn.LayerNorm(head_dim, bias=cfg.bias) if cfg.qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(head_dim, bias=cfg.bias) if cfg.qk_norm else nn.Identity()
        self.logit_max: torch.Tensor | None = None
        """The largest attention logit of the last forward, when the GPT measures logits."""

    def forward(self, x: torch.Tensor, measure: bool = False) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (z.view(b, t, self.n_head, d // self.n_head).transpose(1, 2) for z in (q, k, v))
        q, k = self.q_norm(q), self.k_norm(k)
        if measure:
            self.logit_max = attention_logit_max(q, k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, 4 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.d_model, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.gelu(self.fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, measure: bool = False) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), measure)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """A nanoGPT-like decoder: embeddings, pre-LayerNorm blocks, final LayerNorm, ``lm_head``.

    ``model(idx)`` returns logits; ``model(idx, targets)`` returns the mean cross-entropy loss,
    as in Tripwire's examples (``loss = model(x, y)``). With ``measure_logits`` set, a forward
    also measures the logit signals that :meth:`logit_signals` returns for ``monitor.log``.

    >>> model = GPT(GPTConfig(n_layer=2, d_model=32, n_head=2, block_size=16))
    >>> idx = torch.zeros(3, 16, dtype=torch.long)
    >>> model(idx).shape, model(idx, idx).ndim
    (torch.Size([3, 16, 256]), 0)
    >>> [name for name, m in model.named_modules() if isinstance(m, nn.Linear)][:4]
    ['blocks.0.attn.qkv', 'blocks.0.attn.proj', 'blocks.0.mlp.fc', 'blocks.0.mlp.proj']
    """

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.block_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        # GPT-2: scale the projections into the residual stream by depth.
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, std=0.02 / (2 * cfg.n_layer) ** 0.5)
        if cfg.tie_weights:
            self.lm_head.weight = self.tok_emb.weight
        self.measure_logits = False
        """Measure the largest attention logit and ``log Z`` in each forward (check steps)."""
        self._log_z: torch.Tensor | None = None

    def logit_signals(self) -> dict[str, torch.Tensor]:
        """The last measured forward's ``attn_logit_max`` (over all blocks) and ``log_z``.

        >>> model = GPT(GPTConfig(n_layer=1, d_model=32, n_head=2, block_size=8))
        >>> model.measure_logits = True
        >>> _ = model(torch.zeros(1, 8, dtype=torch.long))
        >>> sorted(model.logit_signals())
        ['attn_logit_max', 'log_z']
        """
        out = {}
        maxima = [b.attn.logit_max for b in self.blocks if b.attn.logit_max is not None]
        if maxima:
            out["attn_logit_max"] = torch.stack(maxima).max()
        if self._log_z is not None:
            out["log_z"] = self._log_z
        return out

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        t = idx.shape[1]
        if t > self.cfg.block_size:
            raise ValueError(
                f"sequence of {t} tokens is longer than block_size {self.cfg.block_size}"
            )
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(t, device=idx.device))
        for block in self.blocks:
            x = block(x, self.measure_logits)
        logits = self.lm_head(self.ln_f(x))
        if self.measure_logits:
            self._log_z = log_z(logits)
        if targets is None:
            return logits
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


@dataclass
class MLPConfig:
    """Shape of the deep MLP."""

    d_in: int = 32
    """Input features."""
    width: int = 256
    """Hidden width of every layer."""
    depth: int = 8
    """Number of hidden layers."""
    n_classes: int = 10
    """Outputs (logits)."""
    norm: str = "none"
    """Normalization after each hidden linear layer: ``"none"``, ``"layer"`` or ``"batch"``."""
    bias: bool = True
    """Bias in the linear layers."""


class DenseLayer(nn.Module):
    def __init__(self, d_in: int, d_out: int, norm: str, bias: bool):
        super().__init__()
        norms = {"none": nn.Identity, "layer": nn.LayerNorm, "batch": nn.BatchNorm1d}
        if norm not in norms:
            raise ValueError(f"norm must be one of {sorted(norms)}, got {norm!r}")
        self.fc = nn.Linear(d_in, d_out, bias=bias)
        self.norm = norms[norm](d_out) if norm != "none" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.fc(x)))


class DeepMLP(nn.Module):
    """A deep ReLU MLP classifier (He-initialised), the benchmark's non-transformer architecture.

    ``model(x)`` returns logits; ``model(x, y)`` returns the mean cross-entropy loss. With
    ``measure_logits`` set, a forward also measures the output ``log Z`` that
    :meth:`logit_signals` returns for ``monitor.log``.

    >>> model = DeepMLP(MLPConfig(d_in=8, width=16, depth=3, n_classes=4, norm="layer"))
    >>> model(torch.zeros(5, 8)).shape
    torch.Size([5, 4])
    >>> [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    ['layers.0.fc', 'layers.1.fc', 'layers.2.fc', 'head']
    """

    def __init__(self, cfg: MLPConfig):
        super().__init__()
        self.cfg = cfg
        self.layers = nn.ModuleList(
            DenseLayer(cfg.d_in if i == 0 else cfg.width, cfg.width, cfg.norm, cfg.bias)
            for i in range(cfg.depth)
        )
        self.head = nn.Linear(cfg.width if cfg.depth else cfg.d_in, cfg.n_classes, bias=cfg.bias)
        for layer in self.layers:
            nn.init.kaiming_normal_(layer.fc.weight, nonlinearity="relu")
        self.measure_logits = False
        """Measure the output ``log Z`` in each forward (check steps)."""
        self._log_z: torch.Tensor | None = None

    def logit_signals(self) -> dict[str, torch.Tensor]:
        """The last measured forward's ``log_z`` (an MLP has no attention logits).

        >>> model = DeepMLP(MLPConfig(d_in=8, width=16, depth=2, n_classes=4))
        >>> model.measure_logits = True
        >>> _ = model(torch.zeros(5, 8))
        >>> sorted(model.logit_signals())
        ['log_z']
        """
        return {} if self._log_z is None else {"log_z": self._log_z}

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        logits = self.head(x)
        if self.measure_logits:
            self._log_z = log_z(logits)
        if targets is None:
            return logits
        return F.cross_entropy(logits, targets)
