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
VIEWPORT = {"width": 1400, "height": 4200}


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
def browser():
    from playwright.sync_api import sync_playwright

    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        missing(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def page(served, browser):
    context = browser.new_context(viewport=VIEWPORT)
    yield context.new_page()
    context.close()


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


# -- the password gate's sign-in cookie ----------------------------------------------------------

PASSWORD = "correct horse battery staple"
SECRET = "a server secret the tests know"
GATE = {"TRIPWIRE_DASHBOARD_PASSWORD": PASSWORD, "TRIPWIRE_DASHBOARD_SECRET": SECRET}
PASSWORD_BOX = 'input[type="password"]'
COOKIE = "tripwire_session"  # documented in docs/dashboard.md


def _sign_in(page, password: str = PASSWORD) -> None:
    page.wait_for_selector(PASSWORD_BOX, timeout=60_000)
    page.fill(PASSWORD_BOX, password)
    page.get_by_role("button", name="Sign in").click()


def _asks_for_the_password(page) -> bool:
    page.wait_for_selector(PASSWORD_BOX, timeout=60_000)
    page.wait_for_timeout(1000)  # give a wrongly let-in page the time to draw its charts
    return page.locator(".js-plotly-plot").count() == 0


def _session_cookie(context) -> dict | None:
    return next((c for c in context.cookies() if c["name"] == COOKIE), None)


def test_signing_in_survives_reloads_and_new_tabs_until_signing_out(exploded, browser):
    import time

    url, uid = exploded
    for base in _serve(url, env=GATE):
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        page.goto(f"{base}/run?run={uid}&step=55")
        _sign_in(page, "not the password")
        page.wait_for_selector("text=Wrong password.", timeout=30_000)
        assert _session_cookie(context) is None
        _sign_in(page)
        _wait_for_charts(page, 5)
        page.wait_for_function("document.cookie.includes('tripwire_session=')", timeout=10_000)
        cookie = _session_cookie(context)
        assert PASSWORD not in cookie["value"] and PASSWORD not in page.url
        assert cookie["path"] == "/" and cookie["sameSite"] == "Strict"
        assert not cookie["httpOnly"]  # written by the page's script: see docs/dashboard.md
        assert 11.9 * 3600 < cookie["expires"] - time.time() <= 12 * 3600

        page.reload()
        _wait_for_charts(page, 5)
        assert page.locator(PASSWORD_BOX).count() == 0
        tab = context.new_page()
        tab.goto(f"{base}/alerts")
        _wait_for_charts(tab, 1)
        assert tab.locator(PASSWORD_BOX).count() == 0
        tab.close()

        page.get_by_role("button", name="Sign out").click()
        assert _asks_for_the_password(page)
        page.wait_for_function("!document.cookie.includes('tripwire_session=')", timeout=10_000)
        page.reload()
        assert _asks_for_the_password(page)
        # a copy of the signed-out token (taken before signing out) is refused by this server
        copied = browser.new_context(viewport=VIEWPORT)
        copied.add_cookies([{"name": cookie["name"], "value": cookie["value"], "url": base}])
        other = copied.new_page()
        other.goto(f"{base}/run?run={uid}")
        assert _asks_for_the_password(other)
        copied.close()
        context.close()


def test_forged_and_expired_sign_in_cookies_are_refused(exploded, browser):
    import time

    from dashboard import auth

    url, uid = exploded
    key = SECRET.encode()
    good = auth.issue(PASSWORD, secret=key)
    version, issued, nonce, signature = good.split(".")
    forged = {
        "issued later": f"{version}.{int(issued) + 3600}.{nonce}.{signature}",
        "signature changed": good[:-2] + ("AA" if not good.endswith("AA") else "BB"),
        "expired": auth.issue(PASSWORD, secret=key, now=time.time() - 12.5 * 3600),
        "another secret": auth.issue(PASSWORD, secret=b"guessed secret"),
        "another password": auth.issue("guessed password", secret=key),
        "the password itself": PASSWORD,
    }
    for base in _serve(url, env=GATE):
        for what, token in {**forged, "signed right": good}.items():
            context = browser.new_context(viewport=VIEWPORT)
            context.add_cookies([{"name": COOKIE, "value": token, "url": base}])
            page = context.new_page()
            page.goto(f"{base}/run?run={uid}")
            if what == "signed right":  # the control: this server takes a token signed right
                _wait_for_charts(page, 5)
                assert page.locator(PASSWORD_BOX).count() == 0
            else:
                assert _asks_for_the_password(page), what
            context.close()


def test_changing_the_password_signs_everyone_out(exploded, browser):
    url, _uid = exploded
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    for base in _serve(url, env=GATE):
        page.goto(base)
        _sign_in(page)
        page.wait_for_selector('[data-testid="stDataFrame"]', timeout=60_000)
        page.wait_for_function("document.cookie.includes('tripwire_session=')", timeout=10_000)
    for base in _serve(url, env=GATE):  # restarted with the same password and secret
        page.goto(base)
        page.wait_for_selector('[data-testid="stDataFrame"]', timeout=60_000)
        assert page.locator(PASSWORD_BOX).count() == 0
    for base in _serve(url, env={**GATE, "TRIPWIRE_DASHBOARD_PASSWORD": "a new password"}):
        page.goto(base)
        page.wait_for_selector(PASSWORD_BOX, timeout=60_000)
        page.wait_for_timeout(1000)
        assert page.locator('[data-testid="stDataFrame"]').count() == 0
    context.close()


# -- deleting a run, finding any run, a name several runs share ----------------------------------


def test_deleting_a_run_from_its_page(db_url, browser):
    from sample_runs import add_alerts, write_run

    from storage import Database, runs, stats
    from storage import alerts as alert_store
    from storage.db import utcnow
    from storage.errors import RunNotFound

    db = Database(db_url)
    db.upgrade()
    doomed = write_run(db, name="scratch-lr1", uid="doomed", steps=60, status="finished")
    add_alerts(db, doomed, 59)
    write_run(db, name="keeper", uid="kept", steps=60, status="finished")
    for base in _serve(db_url, env=GATE):
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        page.goto(f"{base}/run?run=doomed")
        _sign_in(page)
        _wait_for_charts(page, 3)
        page.get_by_text("Delete this run", exact=True).first.click()
        confirm = page.get_by_role("textbox", name="Type the run's name")
        confirm.fill("scratch-lr")
        page.get_by_role("button", name="Delete this run").click()
        page.wait_for_selector("text=does not match", timeout=30_000)
        assert runs.find_run(db, "doomed").id == doomed
        confirm.fill("scratch-lr1")
        page.get_by_role("button", name="Delete this run").click()
        page.wait_for_selector("text=Deleted run scratch-lr1", timeout=30_000)
        assert page.get_by_role("heading", name="Runs").count() == 1
        assert "run=" not in page.url
        page.wait_for_selector("text=1 run ·", timeout=30_000)  # the runs table's caption
        assert page.locator('[data-testid="stException"]').count() == 0
        context.close()
    with pytest.raises(RunNotFound):
        runs.find_run(db, "doomed")
    assert stats.last_steps(db, doomed) == (None, None)
    assert alert_store.list_alerts(db, run_id=doomed) == []
    assert alert_store.active_silences(db, utcnow(), doomed) == []
    assert runs.find_run(db, "kept").name == "keeper"
    db.dispose()


def test_a_link_by_a_name_reruns_share_lists_them(tmp_path, browser):
    from datetime import timedelta

    from sample_runs import write_run

    from storage import Database
    from storage.db import utcnow

    url = f"sqlite:///{tmp_path / 'reruns.db'}"
    db = Database(url)
    db.upgrade()
    for uid, hours in (("first", 30), ("second", 20), ("third", 1)):
        started = utcnow() - timedelta(hours=hours)
        write_run(db, name="gpt", uid=uid, steps=60, status="finished", started=started)
    db.dispose()
    for base in _serve(url):
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        page.goto(f"{base}/run?run=gpt&step=12")
        page.wait_for_selector("text=3 runs are named gpt", timeout=60_000)
        links = page.locator('[data-testid="stPageLink"] a')
        links.nth(2).wait_for(timeout=30_000)
        assert links.count() == 3
        assert page.locator(".js-plotly-plot").count() == 0
        texts = links.all_inner_texts()
        assert [t.split(" · ")[-1] for t in texts] == ["uid third", "uid second", "uid first"]
        links.nth(1).click()
        _wait_for_charts(page, 3)
        assert "run=second" in page.url and "step=12" in page.url
        assert "uid second" in " ".join(
            page.locator('[data-testid="stCaptionContainer"]').all_inner_texts()
        )
        context.close()


def test_the_run_picker_finds_a_run_past_the_newest_500(tmp_path, browser):
    import re

    from sample_runs import needle_among_many

    from storage import Database

    url = f"sqlite:///{tmp_path / 'many.db'}"
    db = Database(url)
    db.upgrade()
    needle_among_many(db)
    db.dispose()
    for base in _serve(url):
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        page.goto(f"{base}/run?run=sweep-0")
        sidebar = page.locator('[data-testid="stSidebar"]')
        search = sidebar.get_by_role("textbox", name="Find a run")
        search.wait_for(timeout=60_000)
        search.fill("needle")
        search.press("Enter")
        page.wait_for_selector("text=1 matching run", timeout=30_000)
        sidebar.locator('[data-testid="stSelectbox"]').first.click()
        page.get_by_role("option", name=re.compile("^Old-Needle · Archive")).click()
        page.get_by_role("heading", name="Old-Needle").first.wait_for(timeout=60_000)
        assert "run=needle" in page.url
        assert page.locator('[data-testid="stException"]').count() == 0
        context.close()
