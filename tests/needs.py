"""What a test does when a part it uses is missing on this machine: a program outside Python
(PostgreSQL, Chromium, openssl) or an optional package (transformers, lightning, accelerate).

Outside CI it skips, naming the part. With ``CI=true`` it fails: the set-up command installs
every part there (``scripts/setup.sh dev``), so a skip would hide a broken one.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest


def missing(reason: str) -> NoReturn:
    """Skip the test (or, called at import, its module) for ``reason``, or fail it in CI.

    >>> missing("no Chromium at /usr/bin/chromium")  # doctest: +SKIP
    """
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: every part the tests use is required)")
    pytest.skip(reason, allow_module_level=True)


def module(name: str) -> ModuleType:
    """Import ``name``; if it is not installed, skip the test (or the test module), or fail in CI.

    >>> lightning = module("lightning")  # doctest: +SKIP
    """
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing(f"cannot import {name}: {exc}")
