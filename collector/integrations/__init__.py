"""Adapters for training frameworks. Each imports its framework only when it is itself imported.

- :class:`collector.integrations.huggingface.TripwireCallback` for ``transformers.Trainer``
- :class:`collector.integrations.lightning.TripwireCallback` for ``lightning.Trainer``
- :class:`collector.integrations.accelerate.TripwireTracker` for ``accelerate.Accelerator``

>>> from collector.integrations.huggingface import TripwireCallback   # doctest: +SKIP
>>> trainer = Trainer(model, args, train_dataset=ds, callbacks=[TripwireCallback(every=10)])
"""

from __future__ import annotations

import importlib
from numbers import Number
from types import ModuleType

import torch


def require(module: str, pip_name: str, feature: str) -> ModuleType:
    """Import ``module``, or fail with the ``pip install`` line that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{feature} needs {pip_name}: pip install {pip_name}") from exc


def numeric(values: dict | None) -> dict:
    """The entries a Monitor can store: numbers and one-element tensors (bools left out)."""
    out = {}
    for key, value in (values or {}).items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            out[str(key)] = value.detach()
        elif isinstance(value, Number) and not isinstance(value, bool):
            out[str(key)] = value
    return out
