"""Forward hooks armed only for the step that is checked: the monitored layers' input rows,
and the output ``log Z`` of the model's output layer."""

from __future__ import annotations

import sys
import warnings
import weakref

import torch

from collector.layers import MonitoredLayer
from collector.logits import log_z
from collector.spectral import sample_rows

# True while dynamo traces (torch >= 2.3); older versions get no hooks in compiled code anyway.
_compiling = getattr(torch.compiler, "is_compiling", lambda: False)


class _Generators:
    """One generator per device, seeded alike and made on first use: sampling indices are drawn
    on the tensor's own device (no host-to-device copy) and never from the loop's global RNG."""

    def __init__(self, seed: int):
        self.seed = seed
        self._by_device: dict[torch.device, torch.Generator] = {}

    def on(self, device: torch.device) -> torch.Generator:
        gen = self._by_device.get(device)
        if gen is None:
            gen = torch.Generator(device=device).manual_seed(self.seed)
            self._by_device[device] = gen
        return gen


class InputSampler:
    """Arms one-shot forward hooks on the monitored layers and keeps a sample of their inputs.

    Between checks no hook is registered, so ordinary steps pay nothing. After ``arm()``, each
    layer's first forward call (the first micro-batch under gradient accumulation) is sampled
    and its hook removes itself; a layer that does not run (an unused branch,
    nn.MultiheadAttention's ``out_proj``, whose weight is used without calling it) keeps its
    hook until ``take()``.

    Layers fed the same tensor (the q, k and v projections of a block, a gated MLP's gate and
    up projections) share one sample of it: its rows are drawn and held once, and the check
    reads them once (:func:`collector.batched.sa_statistics_stack`).

    A sample that fits is the layer's input itself, not a copy (copying every layer's input
    cost 15 % of a check on a small model): autograd keeps that tensor for the backward pass
    anyway. Its version counter is remembered, and a sample that was modified in place before
    ``take()`` is dropped with a warning, so a stale input never reaches the statistics.

    ``torch.compile``d modules ignore hooks registered after compilation, so from ``arm()`` the
    compiler's stance is ``force_eager`` until the forward pass of ``root`` (the watched model)
    ends, or every layer was sampled: the sampled forward pass runs eagerly (once per check);
    compiled code is reused afterwards, nothing recompiles. Code compiled while a layer is still
    armed traces its hook as doing nothing.

    >>> sampler = InputSampler(layers, sample_size=1024, root=model)   # doctest: +SKIP
    >>> sampler.arm(); model(x); rows = sampler.take()   # {layer name: (k, in) tensor}
    """

    def __init__(
        self,
        layers: list[MonitoredLayer],
        sample_size: int = 1024,
        seed: int = 0,
        root: torch.nn.Module | None = None,
    ):
        self.layers = layers
        self.sample_size = sample_size
        self.root = root
        self._generators = _Generators(seed)
        self._handles: dict[str, torch.utils.hooks.RemovableHandle] = {}
        self._root_handle: torch.utils.hooks.RemovableHandle | None = None
        self._rows: dict[str, torch.Tensor] = {}
        self._versions: dict[str, int] = {}
        self._by_input: dict[int, tuple[weakref.ref, int, torch.Tensor]] = {}
        self._stance = None

    @property
    def armed(self) -> bool:
        return bool(self._handles)

    def arm(self) -> None:
        """Register the hooks for the next forward pass (idempotent)."""
        if self.layers and not self._handles:
            self._force_eager()
        for layer in self.layers:
            if layer.name not in self._handles:
                self._handles[layer.name] = layer.module.register_forward_hook(
                    self._hook_for(layer.name)
                )
        if self.root is not None and self._handles and self._root_handle is None:
            self._root_handle = self.root.register_forward_hook(self._root_ran)

    def disarm(self) -> None:
        for handle in list(self._handles.values()):  # nn.DataParallel's replicas pop them too
            handle.remove()
        self._handles.clear()
        if self._root_handle is not None:
            self._root_handle.remove()
            self._root_handle = None
        self._restore_stance()

    def take(self) -> dict[str, torch.Tensor]:
        """The sampled rows since ``arm()``, and forget them; disarms layers that never ran.

        Rows whose tensor was modified in place since its forward pass are left out."""
        rows, self._rows = self._rows, {}
        versions, self._versions = self._versions, {}
        self._by_input.clear()
        self.disarm()
        stale = [name for name, r in rows.items() if r._version != versions[name]]
        if stale:
            warnings.warn(
                f"tripwire: the input of {', '.join(stale)} was modified in place after its "
                "forward pass; its SA statistics are left out of this check",
                stacklevel=3,
            )
        return {name: r for name, r in rows.items() if name not in stale}

    def discard(self) -> None:
        self._rows.clear()
        self._versions.clear()
        self._by_input.clear()
        self.disarm()

    def _sample_of(self, x: torch.Tensor) -> torch.Tensor:
        """The rows sampled from ``x``: drawn at its first layer, the same tensor at the next,
        unless ``x`` was modified in place between them."""
        # Keyed by the tensor object, checked through a weak reference: an address or id()
        # alone could be a freed input's, reused by the next layer's.
        seen = self._by_input.get(id(x))
        if seen is not None and seen[0]() is x and seen[1] == x._version:
            return seen[2]
        with torch.no_grad():
            # In the input's dtype until the check, which computes in fp32: under bf16
            # autocast the held samples take half the memory.
            rows = sample_rows(x, self.sample_size, self._generators.on(x.device))
        self._by_input[id(x)] = (weakref.ref(x), x._version, rows)
        return rows

    def _hook_for(self, name: str):
        def hook(module, inputs, output):  # noqa: ANN001, ARG001
            if _compiling():  # dynamo tracing with the hook still registered: trace nothing
                return
            try:
                x = inputs[0] if inputs else None
                if isinstance(x, torch.Tensor) and x.dim() >= 1 and x.shape[-1] > 0:
                    rows = self._sample_of(x)
                    self._rows[name] = rows
                    self._versions[name] = rows._version
            finally:
                handle = self._handles.pop(name, None)
                if handle is not None:
                    handle.remove()
                if not self._handles:
                    self.disarm()

        return hook

    def _root_ran(self, module, inputs, output) -> None:  # noqa: ANN001, ARG002
        """The root's forward pass ended, after those of its layers: compiled code may run
        again. A layer it did not run stays armed for a call outside it (``head(model(x))``)."""
        if _compiling():
            return
        handle, self._root_handle = self._root_handle, None
        if handle is not None:
            handle.remove()
        self._restore_stance()

    def _force_eager(self) -> None:
        # Only where dynamo is already loaded: importing it just to set a stance costs seconds.
        set_stance = getattr(torch.compiler, "set_stance", None)  # torch >= 2.6
        if self._stance is None and set_stance is not None and "torch._dynamo" in sys.modules:
            self._stance = set_stance("force_eager")

    def _restore_stance(self) -> None:
        stance, self._stance = self._stance, None
        if stance is not None:
            try:
                stance.__exit__(None, None, None)
            except RuntimeError:  # inside a compiled region: retried at the next disarm
                self._stance = stance


class OutputLogZ:
    """A one-shot forward hook on the output layer: ``log Z`` of its logits, on check steps.

    The first forward pass after ``arm()`` is measured on at most ``sample_size`` of its rows
    (token positions, drawn uniformly: the mean over them estimates the mean over all), with
    :func:`collector.log_z`; the result stays a 0-dim tensor on the device until the check.

    >>> probe = OutputLogZ(model.lm_head, sample_size=1024)   # doctest: +SKIP
    >>> probe.arm(); model(x); probe.take()                    # tensor(5.54)
    """

    def __init__(self, module: torch.nn.Module, sample_size: int = 1024, seed: int = 0):
        self.module = module
        self.sample_size = sample_size
        self._generators = _Generators(seed)
        self._handle: torch.utils.hooks.RemovableHandle | None = None
        self._value: torch.Tensor | None = None

    def arm(self) -> None:
        """Register the hook for the next forward pass (idempotent)."""
        if self._handle is None:
            self._handle = self.module.register_forward_hook(self._hook)

    def disarm(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def take(self) -> torch.Tensor | None:
        """The measured ``log Z`` since ``arm()`` (None if the layer did not run); forgets it."""
        value, self._value = self._value, None
        self.disarm()
        return value

    def discard(self) -> None:
        self._value = None
        self.disarm()

    def _hook(self, module, inputs, output) -> None:  # noqa: ANN001, ARG002
        try:
            if isinstance(output, torch.Tensor) and output.dim() >= 1 and output.shape[-1] > 0:
                gen = self._generators.on(output.device)
                with torch.no_grad():
                    self._value = log_z(sample_rows(output, self.sample_size, gen))
        finally:
            self.disarm()
