"""Column types that keep non-finite floats faithfully on every backend."""

from __future__ import annotations

import json
import math

import numpy as np
from sqlalchemy import Float, LargeBinary, Text
from sqlalchemy.types import TypeDecorator


class FaithfulFloat(TypeDecorator):
    """A double that stores NaN, +Inf and -Inf as what they are.

    PostgreSQL keeps all three natively. SQLite keeps ±Inf but silently turns a
    bound NaN into NULL, so on SQLite NaN is stored as the text ``'NaN'`` (SQLite
    keeps non-numeric text in a REAL column) and read back as ``float('nan')``.
    NULL still means "not measured". Both backends sort NaN above every number,
    so MIN/MAX downsampling keeps a NaN visible.
    """

    impl = Float(precision=53)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        value = float(value)
        if dialect.name == "sqlite" and math.isnan(value):
            return "NaN"
        return value

    def bind_processor(self, dialect):
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)
        # SQLite's own float processor would turn the text "NaN" back into a float (→ NULL).
        return lambda value: self.process_bind_param(value, dialect)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return float(value)  # float("NaN") parses the SQLite text form


class Counts(TypeDecorator):
    """A short list of non-negative integers (a histogram) stored compactly as bytes."""

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        return np.asarray(value, dtype="<u4").tobytes()

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return np.frombuffer(bytes(value), dtype="<u4").tolist()


class JSONText(TypeDecorator):
    """JSON kept as text (portable across SQLite and PostgreSQL, NaN allowed)."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        return json.dumps(value, default=str)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return json.loads(value)
