"""A small TOML writer for ``tripwire.toml`` (tables, arrays of tables, scalars, lists).

Python reads TOML (``tomllib``) but does not write it; this covers what the configuration holds.

>>> print(dumps({"engine": {"interval_s": 5.0}, "predictors": {"loss_spike": {"enabled": False}}}))
[engine]
interval_s = 5.0
<BLANKLINE>
[predictors.loss_spike]
enabled = false
<BLANKLINE>
"""

from __future__ import annotations

import json
import math
import re

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(key: str) -> str:
    return key if _BARE.match(key) else json.dumps(key)


def _value(value) -> str:  # noqa: ANN001
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _is_table(value) -> bool:  # noqa: ANN001
    return isinstance(value, dict)


def _is_table_array(value) -> bool:  # noqa: ANN001
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def dumps(doc: dict) -> str:
    """``doc`` as TOML text: scalars first, then sub-tables, then arrays of tables."""
    return "\n".join(_blocks(doc, "", None))


def _blocks(doc: dict, prefix: str, header: str | None) -> list[str]:
    scalars = [
        f"{_key(k)} = {_value(v)}\n"
        for k, v in doc.items()
        if not _is_table(v) and not _is_table_array(v)
    ]
    blocks = []
    if header is not None and (scalars or not doc):
        blocks.append(header + "\n" + "".join(scalars))
    elif scalars:
        blocks.append("".join(scalars))
    for key, value in doc.items():
        name = f"{prefix}{_key(key)}"
        if _is_table(value):
            blocks += _blocks(value, name + ".", f"[{name}]")
        elif _is_table_array(value):
            for item in value:
                blocks.append(f"[[{name}]]\n" + "".join(_blocks(item, name + ".", None)))
    return blocks
