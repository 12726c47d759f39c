"""Small readings of query results that the pages put into words (pure; no Streamlit).

>>> from storage.series import LayerMatrix
>>> m = LayerMatrix("sa_imbalance", ["a", "b"], [0, 10, 20], [[0.1, 0.2, 0.9], [0.1, 0.8, 0.9]])
>>> first_crossings(m, 0.5)
[('b', 10), ('a', 20)]
"""

from __future__ import annotations

import math

COLLAPSE_D = 0.5
"""SA imbalance at which the run page calls a layer's distribution collapsed (display only)."""


def first_crossings(matrix, threshold: float = COLLAPSE_D) -> list[tuple[str, int]]:
    """(layer, first step) for each layer whose value reaches ``threshold``, earliest first,
    ties in model order. Non-finite values do not count (see :func:`first_nonfinite`)."""
    return _first(matrix, lambda v: math.isfinite(v) and v >= threshold)


def first_nonfinite(matrix) -> list[tuple[str, int]]:
    """(layer, first step) for each layer with a NaN or ±Inf, earliest first."""
    return _first(matrix, lambda v: not math.isfinite(v))


def _first(matrix, hit) -> list[tuple[str, int]]:
    found = []
    for order, (name, row) in enumerate(zip(matrix.layers, matrix.z, strict=True)):
        for step, value in zip(matrix.steps, row, strict=True):
            if value is not None and hit(value):
                found.append((step, order, name))
                break
    return [(name, step) for step, _, name in sorted(found)]


def default_layer(matrix, layers: list[str]) -> str | None:
    """The layer to show first: the earliest to collapse, else the most imbalanced, else the first."""
    crossings = first_crossings(matrix)
    if crossings:
        return crossings[0][0]
    best, best_value = None, -1.0
    for name, row in zip(matrix.layers, matrix.z, strict=True):
        values = [v for v in row if v is not None and math.isfinite(v)]
        if values and max(values) > best_value:
            best, best_value = name, max(values)
    return best or (layers[0] if layers else None)
