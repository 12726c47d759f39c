"""Small readings of query results that the pages put into words (pure; no Streamlit).

>>> from storage.series import LayerMatrix
>>> steps = [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
>>> m = LayerMatrix("sa_imbalance", ["a", "b"], steps, [[0.1] * 10 + [0.9], [0.95] * 11])
>>> first_collapses(m)
[('a', 100)]
"""

from __future__ import annotations

import math

from alerts.predictors.base import Observation
from alerts.predictors.sa import PARAMS as SA_COLLAPSE_PARAMS
from alerts.predictors.sa import sa_collapse
from storage.entities import LayerStat


def first_collapses(matrix) -> list[tuple[str, int]]:
    """(layer, first step) for each layer whose SA imbalance collapsed against its own
    baseline, as the ``sa_collapse`` predictor judges it at its defaults, earliest first, ties
    in model order. An absolute level would name layers that are one-signed from the start
    (D near 1 after a LayerNorm or GELU is normal), which says nothing about trouble."""
    memory: dict = {}
    found: dict[str, int] = {}
    for j, step in enumerate(matrix.steps):
        layers = {  # a layer already found needs no more judging: only its first step counts
            name: LayerStat(step, name, sa_imbalance=row[j])
            for name, row in zip(matrix.layers, matrix.z, strict=True)
            if row[j] is not None and name not in found
        }
        for verdict in sa_collapse(Observation(step, layers=layers), memory, SA_COLLAPSE_PARAMS):
            if verdict.holds:
                found[verdict.layer] = step
    order = {name: i for i, name in enumerate(matrix.layers)}
    return sorted(found.items(), key=lambda item: (item[1], order[item[0]]))


def first_nonfinite(matrix) -> list[tuple[str, int]]:
    """(layer, first step) for each layer with a NaN or ±Inf, earliest first."""
    found = []
    for order, (name, row) in enumerate(zip(matrix.layers, matrix.z, strict=True)):
        for step, value in zip(matrix.steps, row, strict=True):
            if value is not None and not math.isfinite(value):
                found.append((step, order, name))
                break
    return [(name, step) for step, _, name in sorted(found)]


def default_layer(matrix, layers: list[str], collapses: list[tuple[str, int]]) -> str | None:
    """The layer to show first: the earliest of ``collapses`` (:func:`first_collapses` of
    ``matrix``, which the page has already worked out for its caption), else the most
    imbalanced, else the first."""
    if collapses:
        return collapses[0][0]
    best, best_value = None, -1.0
    for name, row in zip(matrix.layers, matrix.z, strict=True):
        values = [v for v in row if v is not None and math.isfinite(v)]
        if values and max(values) > best_value:
            best, best_value = name, max(values)
    return best or (layers[0] if layers else None)
