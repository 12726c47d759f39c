"""Dashboard fixtures: a SQLite database file in each of the states the pages must handle."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from storage import Database

sys.path.insert(0, str(Path(__file__).parent))
from sample_runs import SCENARIOS, populate  # noqa: E402


@pytest.fixture(params=SCENARIOS)
def scenario_db(request, tmp_path, monkeypatch):
    """(url, uid of the run to open or None, scenario name); ``TRIPWIRE_DB_URL`` points at it."""
    url = f"sqlite:///{tmp_path / 'dash.db'}"
    db = Database(url)
    db.upgrade()
    uid = populate(db, request.param)
    db.dispose()
    monkeypatch.setenv("TRIPWIRE_DB_URL", url)
    return url, uid, request.param
