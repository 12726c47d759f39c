"""JSON on the command line: one convention for every command that prints or writes it.

NaN and ±Inf, which JSON has no numbers for, are the strings ``"nan"``, ``"inf"`` and
``"-inf"`` (as in webhook payloads); a value that is absent (never logged) is ``null``.

>>> dumps([{"loss": float("nan"), "lr": None, "step": 3}])
'[{"loss": "nan", "lr": null, "step": 3}]'
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any


def json_value(value: Any) -> Any:
    """``value`` as JSON can carry it: non-finite floats as strings, missing (None, pandas'
    NA/NaT) as None, datetimes in ISO 8601, numpy scalars as Python numbers; lists and dicts
    item by item."""
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        return None
    if hasattr(value, "tolist") and getattr(value, "ndim", 0) > 0:  # numpy arrays
        value = value.tolist()
    elif hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    return value


def dumps(rows: list[dict], indent: int | None = None) -> str:
    """``rows`` as a JSON list, every value through :func:`json_value` (never bare ``NaN``)."""
    return json.dumps(
        [{k: json_value(v) for k, v in row.items()} for row in rows], indent=indent, allow_nan=False
    )
