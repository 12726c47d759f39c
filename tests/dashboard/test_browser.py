"""A real browser: serve the dashboard on a test database and load pages in headless Chromium."""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import pytest

from dashboard import server
from tests.needs import missing

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = os.environ.get("TRIPWIRE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(url: str, env: dict | None = None):
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        missing(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    port = _free_port()
    process = server.start(url, port=port, env=env)
    try:
        assert server.wait_ready(port, timeout=90, process=process), "dashboard did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop(process)


@pytest.fixture(scope="module")
def exploded(real_dbs):
    return real_dbs["alerts"]


@pytest.fixture(scope="module")
def served(exploded):
    yield from _serve(exploded[0])


@pytest.fixture(scope="module")
def page(served):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 4200})
        yield context.new_page()
        browser.close()


def _wait_for_charts(page, count: int) -> None:
    page.wait_for_function(
        f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {count}",
        timeout=60_000,
    )
    page.wait_for_timeout(1500)  # let the last charts finish drawing before the screenshot


def test_run_page_shows_loss_chart_and_heatmaps(served, exploded, page):
    _, uid = exploded
    page.goto(f"{served}/run?run={uid}&step=55")
    _wait_for_charts(page, 5)
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.get_by_role("heading", name="exploded").count() >= 1
    # Plotly draws heatmaps as images inside .heatmaplayer and lines inside .scatterlayer.
    assert page.locator(".heatmaplayer image").count() >= 3
    assert page.locator(".subplot.xy .scatterlayer .trace").count() >= 3
    titles = page.locator(".js-plotly-plot").all_inner_texts()
    joined = " ".join(titles)
    assert "loss" in joined and "SA imbalance" in joined
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-run.png"), full_page=True)


def test_runs_and_alerts_pages_render(served, page):
    page.goto(f"{served}/runs")
    page.wait_for_selector('[data-testid="stDataFrame"]', timeout=60_000)
    assert page.locator('[data-testid="stException"]').count() == 0
    page.goto(f"{served}/alerts")
    _wait_for_charts(page, 1)
    assert page.locator('[data-testid="stException"]').count() == 0
    page.screenshot(path=str(ARTIFACTS / "dashboard-alerts.png"), full_page=True)


def test_password_gate_guards_deep_links(exploded, page):
    url, uid = exploded
    for base in _serve(url, env={"TRIPWIRE_DASHBOARD_PASSWORD": "hunter2-secret"}):
        page.goto(f"{base}/run?run={uid}&step=55")
        page.wait_for_selector('input[type="password"]', timeout=60_000)
        page.wait_for_timeout(1000)
        assert page.locator(".js-plotly-plot").count() == 0
        assert "hunter2-secret" not in page.content()
        page.fill('input[type="password"]', "hunter2-secret")
        page.get_by_role("button", name="Sign in").click()
        _wait_for_charts(page, 5)
        assert page.locator('[data-testid="stException"]').count() == 0
