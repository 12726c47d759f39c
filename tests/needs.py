"""What a test does when a part from outside Python is missing on this machine.

Outside CI it skips, naming the part. With ``CI=true`` it fails: the set-up command installs
every part there (``scripts/setup.sh dev``), so a skip would hide a broken one.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing(reason: str) -> NoReturn:
    """Skip the test for ``reason``, or fail it in CI.

    >>> missing("no Chromium at /usr/bin/chromium")  # doctest: +SKIP
    """
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: every part the tests use is required)")
    pytest.skip(reason)
