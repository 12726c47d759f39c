"""Adapters for training frameworks. Each imports its framework only when it is itself imported.

- :class:`collector.integrations.huggingface.TripwireCallback` for ``transformers.Trainer``
- :class:`collector.integrations.lightning.TripwireCallback` for ``lightning.Trainer``
- :class:`collector.integrations.accelerate.TripwireTracker` for ``accelerate.Accelerator``

>>> from collector.integrations.huggingface import TripwireCallback   # doctest: +SKIP
>>> trainer = Trainer(model, args, train_dataset=ds, callbacks=[TripwireCallback(every=10)])
"""

from __future__ import annotations

import importlib
from types import ModuleType

import numpy as np

from collector.scalars import as_scalar


def require(module: str, pip_name: str, feature: str) -> ModuleType:
    """Import ``module``, or fail with the ``pip install`` line that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{feature} needs {pip_name}: pip install {pip_name}") from exc


def numeric(values: dict | None) -> dict:
    """The entries of a framework's log a Monitor can store, by the Monitor's own rule
    (:func:`collector.scalars.as_scalar`: one number), bools left out; the rest (strings, lists)
    is passed over in silence, as frameworks log such things too.

    >>> import torch
    >>> numeric({"loss": 2.5, "epoch": torch.tensor([1.0]), "done": True, "tags": ["a"]})
    {'loss': 2.5, 'epoch': tensor([1.])}
    """
    out = {}
    for key, value in (values or {}).items():
        if isinstance(value, (bool, np.bool_)):
            continue
        number = as_scalar(value)
        if number is not None:
            out[str(key)] = number
    return out
