"""Dashboard fixtures: databases filled by real short training runs, in each state the pages
must handle (empty, a live run, a finished run with real alerts, a run that went NaN)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# AppTest puts a page's folder on sys.path, where dashboard/views/alerts.py would shadow the
# alerts package for a test whose first import of the dashboard is through a page.
import dashboard.queries  # noqa: F401
from storage import Database

sys.path.insert(0, str(Path(__file__).parent))
from real_runs import add_service_records, evaluate_alerts, train  # noqa: E402

SCENARIOS = ("empty", "live", "alerts", "nan")


@pytest.fixture(autouse=True)
def _keep_main_module():
    """Streamlit's AppTest runs a page as ``__main__`` and leaves it there; processes started
    later with the spawn method (torch.multiprocessing, the DDP tests) would re-run that page."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


@pytest.fixture(scope="session")
def real_dbs(tmp_path_factory):
    """scenario → (url, uid of the run to open or None), built once per test session."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model on a shared machine: threads only contend
    root = tmp_path_factory.mktemp("real_runs")
    out, open_monitors = {}, []
    for scenario in SCENARIOS:
        url = f"sqlite:///{root / f'{scenario}.db'}"
        db = Database(url)
        db.upgrade()
        db.dispose()
        out[scenario] = (url, None)
    url = out["live"][0]
    live = train(url, "live-run", steps=40, close=False)
    open_monitors.append(live)
    out["live"] = (url, live.uid)
    url = out["alerts"][0]
    exploded = train(url, "exploded", steps=80, explode_at=50)
    train(url, "baseline", steps=80, seed=1)
    evaluate_alerts(url)
    add_service_records(url, exploded.uid)
    out["alerts"] = (url, exploded.uid)
    url = out["nan"][0]
    broken = train(url, "nan-run", steps=40, explode_at=15, close=False)
    broken.close(status="failed", error="RuntimeError: loss became NaN")
    out["nan"] = (url, broken.uid)
    torch.set_num_threads(threads)
    yield out
    for monitor in open_monitors:
        monitor.close()


@pytest.fixture(params=SCENARIOS)
def scenario_db(request, real_dbs, monkeypatch):
    """(url, uid of the run to open or None, scenario); ``TRIPWIRE_DB_URL`` points at it."""
    url, uid = real_dbs[request.param]
    monkeypatch.setenv("TRIPWIRE_DB_URL", url)
    return url, uid, request.param
