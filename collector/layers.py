"""Which layers are monitored: every ``nn.Linear`` (and ``transformers``' ``Conv1D``, the
transposed linear layer of GPT-2) by default, filtered by name patterns."""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass

from torch import nn
from torch.nn.parameter import is_lazy

from storage.entities import listed

log = logging.getLogger("tripwire.collector")


@dataclass(frozen=True)
class MonitoredLayer:
    """A linear layer the collector watches, with its dotted name in the model."""

    name: str
    position: int
    module: nn.Module

    @property
    def weight(self):
        """The weight parameter as the module holds it (its ``.grad`` is the gradient)."""
        return self.module.weight

    @property
    def transposed(self) -> bool:
        """``Conv1D`` stores its weight as in × out and computes ``x @ W``."""
        return _is_conv1d(self.module)

    def matrix(self, weight):  # noqa: ANN001, ANN201
        """``weight`` (this layer's, or a gathered copy of it) as out × in, like ``nn.Linear``'s:
        a view, so that v1 lives in the space of the layer's input rows."""
        return weight.t() if self.transposed else weight

    def spec(self) -> dict:
        """The layer as storage registers it (shape out × in whatever the module's layout)."""
        return {
            "name": self.name,
            "position": self.position,
            "kind": type(self.module).__name__,
            "shape": list(self.matrix(self.module.weight).shape),
        }


def _is_conv1d(module: nn.Module) -> bool:
    # transformers.pytorch_utils.Conv1D, recognised without importing transformers
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def select_layers(
    model: nn.Module,
    include: list[str] | str | None = None,
    exclude: list[str] | str | None = None,
    types: tuple[type[nn.Module], ...] = (nn.Linear,),
) -> list[MonitoredLayer]:
    """The model's linear layers (``types``, and ``Conv1D``) in model order, filtered by glob
    patterns on their names.

    A layer is kept if its name matches any ``include`` pattern (all layers when none is given)
    and no ``exclude`` pattern. Layers whose weight is empty are skipped: they have no spectrum.
    So are lazy layers (``nn.LazyLinear``) that have not run yet, with one warning: their shape
    is unknown until the first forward pass.

    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> [layer.name for layer in select_layers(model, exclude="2")]
    ['0']
    """
    include = [include] if isinstance(include, str) else list(include or [])
    exclude = [exclude] if isinstance(exclude, str) else list(exclude or [])
    chosen, lazy = [], []
    for name, module in model.named_modules():
        if not (isinstance(module, types) or _is_conv1d(module)):
            continue
        if getattr(module, "weight", None) is None:
            continue
        if include and not any(fnmatch.fnmatchcase(name, p) for p in include):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in exclude):
            continue
        if is_lazy(module.weight):
            lazy.append(name or "<root>")
            continue
        if module.weight.dim() != 2 or module.weight.numel() == 0:
            continue
        chosen.append(MonitoredLayer(name=name or "<root>", position=len(chosen), module=module))
    if lazy:
        log.warning(
            "tripwire: %d lazy layer(s) not initialised yet are not monitored (%s): run one "
            "forward pass before watch(), or call watch() after the first batch",
            len(lazy),
            listed(lazy),
        )
    return chosen
