"""What a logged value may be: one number, kept as a float or as a one-element tensor on its device."""

from __future__ import annotations

from decimal import Decimal
from numbers import Real

import numpy as np
import torch

_NUMBERS = (Real, Decimal, np.bool_)
"""Python's bool, int, float and Fraction, numpy's integer and floating scalars (numpy registers
them as ``Real``), ``Decimal`` and ``numpy.bool_``; not complex numbers."""


def as_scalar(value) -> float | torch.Tensor | None:
    """``value`` as the Monitor keeps it, or None when it is not one number.

    A one-element tensor (0-dim or not, any device) is kept detached on its device: it is read
    back later, on the writer thread, since reading it here would make the training thread wait
    for the device. Numbers and one-element numpy arrays become floats (NaN and ±Inf included).
    A tensor or array of several elements (or none), a complex number, a string, None or any
    other object is not a number. This runs for every value at every step, so it only looks
    at types and shapes: no ``.item()``, no host copy.

    >>> as_scalar(torch.tensor([2.5])), as_scalar(np.float32(0.5)), as_scalar(3)
    (tensor([2.5000]), 0.5, 3.0)
    >>> as_scalar(torch.tensor([1.0, 2.0])) is None and as_scalar("1.5") is None
    True
    """
    if type(value) is float:  # lr and most hand-logged values
        return value
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex():
            return None
        return value.detach()
    if isinstance(value, np.ndarray):
        if value.size != 1:
            return None
        value = value.item()  # host memory: no sync
    if isinstance(value, _NUMBERS):
        try:
            return float(value)
        except (ValueError, OverflowError):  # an int past float's range, a signalling Decimal
            return None
    return None


def describe(value) -> str:
    """What a value that is not one number is, for a warning: its type and shape.

    >>> describe(torch.zeros(2, 3)), describe(np.ones(4)), describe("abc"), describe(object())
    ('a tensor of shape (2, 3)', 'a numpy array of shape (4,)', 'a str', 'an object')
    """
    if value is None:
        return "None"
    if isinstance(value, torch.Tensor):
        kind = f"{value.dtype} tensor".removeprefix("torch.") if value.is_complex() else "tensor"
        return f"a {kind} of shape {tuple(value.shape)}"
    if isinstance(value, np.ndarray):
        dtype = "" if value.dtype.kind in "biuf" else f" and dtype {value.dtype}"
        return f"a numpy array of shape {value.shape}{dtype}"
    name = type(value).__name__
    article = "an" if name[:1].lower() in "aeiou" else "a"
    if isinstance(value, _NUMBERS):
        return f"{article} {name} with no float value ({value!r:.40})"
    return f"{article} {name}"


def several(value) -> bool:
    """Whether ``value`` is a tensor or array of more than one element (one could log its mean)."""
    if isinstance(value, torch.Tensor):
        return value.numel() > 1
    return isinstance(value, np.ndarray) and value.size > 1
