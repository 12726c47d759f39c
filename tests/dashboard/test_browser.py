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
    page.goto(served)  # the Runs page: Streamlit serves the default page at the root only
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


HOSTILE = '<script>alert("x")</script> **bold** [link](http://evil.example) 🚀 $x$ :red[red]'
PHISHING = "[Your session expired, sign in here](http://evil.example)"


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    """A failed run whose name, error and silence reason are Markdown, and a live run."""
    from datetime import timedelta

    from sample_runs import write_run

    from storage import Database
    from storage.alerts import silence_run
    from storage.db import utcnow

    url = f"sqlite:///{tmp_path_factory.mktemp('crafted') / 'crafted.db'}"
    db = Database(url)
    db.upgrade()
    error = "RuntimeError: **NaN** in [the loss](http://evil.example)"
    hostile = write_run(db, name=HOSTILE, uid="hostile", steps=60, status="failed", error=error)
    reason = "[known issue](http://evil.example) **rerunning**"
    silence_run(db, hostile, until=utcnow() + timedelta(hours=1), reason=reason, created_by="t")
    live = write_run(db, name="grows", uid="grows", steps=100)
    yield url, db, live
    db.dispose()


@pytest.fixture(scope="module")
def crafted_served(crafted):
    yield from _serve(crafted[0])


def _links_to_evil(page) -> list[str]:
    return page.evaluate(
        """() => [...document.querySelectorAll('a')]
            .map(a => a.getAttribute('href') || a.getAttribute('xlink:href') || '')
            .filter(h => new URL(h, location.href).hostname.includes('evil'))"""
    )


def _shown(page, selector: str) -> str:
    # fmt.md puts an invisible word joiner into http:// so that GFM does not autolink it
    return " ".join(page.locator(selector).all_inner_texts()).replace("\u2060", "")


def test_names_reasons_errors_and_links_show_literally(crafted_served, page):
    from urllib.parse import quote

    page.goto(f"{crafted_served}/run?run=hostile")
    _wait_for_charts(page, 3)
    assert HOSTILE in _shown(page, "h1")
    page.get_by_text("Config").click()
    page.wait_for_timeout(500)
    assert "RuntimeError: **NaN** in [the loss](http://evil.example)" in _shown(page, "body")
    assert _links_to_evil(page) == []

    page.goto(f"{crafted_served}/run?run={quote(PHISHING)}")
    _wait_for_charts(page, 3)
    assert f"No run named or with uid '{PHISHING}'" in _shown(page, '[data-testid="stAlert"]')
    assert _links_to_evil(page) == []

    page.goto(f"{crafted_served}/alerts")
    page.wait_for_selector("text=Unsilence", timeout=60_000)
    silenced = _shown(page, '[data-testid="stMarkdownContainer"]')
    assert HOSTILE in silenced and "[known issue](http://evil.example) **rerunning**" in silenced
    assert _links_to_evil(page) == []
    assert page.locator('[data-testid="stException"]').count() == 0


def test_the_step_range_follows_a_live_run(crafted_served, crafted, page):
    from storage import runs, stats
    from storage.db import utcnow

    _url, db, run_id = crafted
    with db.session() as s:
        runs.touch(s, run_id, last_step=99, at=utcnow())  # live, not stalled
    page.goto(f"{crafted_served}/run?run=grows")
    _wait_for_charts(page, 3)
    thumbs = page.locator('[data-testid="stSidebar"] [data-testid="stSlider"] input[type="range"]')
    assert [t.get_attribute("max") for t in thumbs.all()] == ["99", "99"]
    rows = [
        {"step": step, "key": key, "value": 1.0, "wall_time": float(step)}
        for step in range(100, 200)
        for key in ("loss", "lr")
    ]
    with db.session() as s:
        stats.write_scalars(s, run_id, rows)
        runs.touch(s, run_id, last_step=199, at=utcnow())
    # The page refreshes every 3 s and its reads are cached for 3 s. The range ended at the last
    # step, so its end follows too.
    page.wait_for_function(
        """() => [...document.querySelectorAll('[data-testid="stSidebar"] input[type="range"]')]
            .map(t => t.max + ':' + t.value).join(' ') === '199:0 199:199'""",
        timeout=40_000,
    )
    assert page.locator('[data-testid="stException"]').count() == 0
