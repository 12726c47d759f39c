"""``tripwire evaluate``, ``notify test``, ``silence``, ``scheduler`` from the command line."""

from __future__ import annotations

import json
import logging
import time

import pytest
from click.testing import CliRunner

from alerts.config import parse_config
from alerts.scheduler import build_scheduler
from alerts.service import AlertService
from storage import alerts as store
from tests.alerts.conftest import exploding_series, finish_run, make_run, write_steps
from tests.alerts.test_notifiers_http import Recorder
from tripwire.cli import cli


@pytest.fixture
def runner(monkeypatch, tmp_path):
    for var in (
        "TRIPWIRE_CONFIG",
        "TRIPWIRE_SLACK_WEBHOOK_URL",
        "TRIPWIRE_WEBHOOK_URL",
        "TRIPWIRE_SMTP_HOST",
        "TRIPWIRE_EMAIL_TO",
        "TRIPWIRE_DB_URL",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return CliRunner()


@pytest.fixture
def exploded(sqlite_db):
    scalars, layers = exploding_series(steps=300, blowup=200)
    run = make_run(sqlite_db, "boom", layers=["fc", "ln_out"])
    write_steps(sqlite_db, run, scalars, layers)
    finish_run(sqlite_db, run)
    quiet = make_run(sqlite_db, "calm", layers=["fc"])
    write_steps(sqlite_db, quiet, {s: {"loss": 2.0, "grad_norm": 1.0} for s in range(100)})
    finish_run(sqlite_db, quiet)
    return sqlite_db


def test_evaluate_json_lists_alerts_and_writes_nothing(runner, exploded):
    result = runner.invoke(cli, ["evaluate", "--db", exploded.url, "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows and {r["run"] for r in rows} == {"boom"}
    for key in ("run", "predictor", "severity", "step", "layer", "message"):
        assert all(key in r for r in rows)
    non_finite = [r for r in rows if r["predictor"] == "non_finite"]
    assert non_finite[0]["severity"] == "critical" and non_finite[0]["step"] == 260
    assert store.list_alerts(exploded) == []

    one = runner.invoke(cli, ["evaluate", "--db", exploded.url, "--run", "calm", "--json"])
    assert json.loads(one.output) == []
    text = runner.invoke(cli, ["evaluate", "--db", exploded.url, "--run", "boom"])
    assert "non_finite" in text.output and "step 260" in text.output
    missing = runner.invoke(cli, ["evaluate", "--db", exploded.url, "--run", "nope"])
    assert missing.exit_code == 1 and "no run named 'nope'" in missing.output


def test_evaluate_min_severity_leaves_out_weaker_alerts(runner, exploded):
    def severities(*extra):
        result = runner.invoke(cli, ["evaluate", "--db", exploded.url, "--json", *extra])
        assert result.exit_code == 0, result.output
        return {r["severity"] for r in json.loads(result.output)}

    assert severities() >= {"info", "critical"}
    warnings_up = severities("--min-severity", "warning")
    assert "critical" in warnings_up and "info" not in warnings_up
    assert severities("--min-severity", "critical") == {"critical"}
    bad = runner.invoke(cli, ["evaluate", "--db", exploded.url, "--min-severity", "loud"])
    assert bad.exit_code == 2 and "'loud' is not one of" in bad.output


def test_evaluate_uses_the_config_file(runner, exploded, tmp_path):
    (tmp_path / "tripwire.toml").write_text(
        "[predictors.non_finite]\nenabled = false\n[predictors.sa_collapse]\nenabled = false\n"
    )
    rows = json.loads(runner.invoke(cli, ["evaluate", "--db", exploded.url, "--json"]).output)
    assert rows and not {"non_finite", "sa_collapse"} & {r["predictor"] for r in rows}
    (tmp_path / "tripwire.toml").write_text("[predictors.nope]\n")
    bad = runner.invoke(cli, ["evaluate", "--db", exploded.url])
    assert bad.exit_code == 1 and "predictors.nope: unknown predictor" in bad.output
    assert "Traceback" not in bad.output


def test_a_misspelled_statistic_stops_evaluate_with_one_line(runner, exploded, tmp_path):
    (tmp_path / "tripwire.toml").write_text('[predictors.weight_growth]\nstat = "sigma_1"\n')
    bad = runner.invoke(cli, ["evaluate", "--db", exploded.url])
    assert bad.exit_code == 1 and len(bad.output.strip().splitlines()) == 1, bad.output
    assert "predictors.weight_growth.stat: unknown layer statistic 'sigma_1'; valid: " in bad.output
    assert "sigma1" in bad.output and "Traceback" not in bad.output


def test_notify_test_sends_through_every_notifier_and_records(runner, sqlite_db, monkeypatch):
    server = Recorder([500, 200])
    monkeypatch.setenv("TRIPWIRE_WEBHOOK_URL", server.url)
    result = runner.invoke(cli, ["notify", "test", "--db", sqlite_db.url])
    server.close()
    assert result.exit_code == 0, result.output
    assert "[tripwire] Tripwire test message" in result.output  # the console notifier
    port = server.url.split(":")[2].split("/")[0]
    assert f"WebhookNotifier('webhook' → http://127.0.0.1:{port}/…): sent" in result.output
    assert "SECRET" not in result.output
    assert json.loads(server.requests[-1]["body"])["event"] == "test"
    notes = {n.notifier: n for n in store.list_notifications(sqlite_db)}
    assert notes["webhook"].attempts == 2 and notes["webhook"].status == "sent"
    assert notes["log"].event == "test"


def test_notify_test_fails_clearly(runner, sqlite_db, monkeypatch):
    monkeypatch.setenv("TRIPWIRE_WEBHOOK_URL", "http://example.com/hook/SECRET")
    result = runner.invoke(cli, ["notify", "test", "--db", sqlite_db.url])
    assert result.exit_code == 1
    assert "TRIPWIRE_WEBHOOK_URL: must be an https URL" in result.output
    assert "SECRET" not in result.output


@pytest.mark.parametrize("command", [["notify", "test"], ["scheduler", "--once"], ["up"]])
def test_a_url_written_into_url_env_is_refused_without_being_shown(
    runner, sqlite_db, tmp_path, command
):
    # url_env names the variable that holds the URL; the URL pasted there is a secret in the file
    path = tmp_path / "tripwire.toml"
    path.write_text(
        '[[notifiers]]\nkind = "slack"\nurl_env = "https://hooks.slack.com/services/T0/B0/S3cret"\n'
    )
    result = runner.invoke(cli, [*command, "--db", sqlite_db.url, "--config", str(path)])
    assert result.exit_code == 1, result.output
    assert "notifiers[0].url_env: must name an environment variable" in result.output
    assert "S3cret" not in result.output and "hooks.slack.com" not in result.output


@pytest.mark.parametrize("kind", ["webhook", "slack"])
def test_a_url_with_a_space_or_control_character_is_refused_without_being_shown(
    runner, sqlite_db, monkeypatch, caplog, kind
):
    # urllib's error for such a URL quotes its path, and the path holds the secret token
    server = Recorder([])
    variable = {"webhook": "TRIPWIRE_WEBHOOK_URL", "slack": "TRIPWIRE_SLACK_WEBHOOK_URL"}[kind]
    monkeypatch.setenv(variable, server.url.replace("SECRET", "SEC RET"))
    try:
        result = runner.invoke(cli, ["notify", "test", "--db", sqlite_db.url])
    finally:
        server.close()
    assert result.exit_code == 1, result.output
    assert f"{variable}: holds a space or control character" in result.output
    shown = result.output + caplog.text
    shown += " ".join(n.error or "" for n in store.list_notifications(sqlite_db, limit=100))
    assert "SEC RET" not in shown and "T000" not in shown


def test_silence_and_unsilence(runner, exploded):
    out = runner.invoke(
        cli, ["silence", "boom", "--for", "2h", "--reason", "known", "--db", exploded.url]
    )
    assert out.exit_code == 0 and "silenced run boom (project default) until" in out.output
    from storage import runs, utcnow

    run = runs.find_run(exploded, "boom")
    (silence,) = store.active_silences(exploded, utcnow(), run.id)
    assert silence.reason == "known" and silence.until is not None
    for duration in ("soon", "0m", "99999999d"):  # words, nothing, or past any calendar
        bad = runner.invoke(cli, ["silence", "boom", "--for", duration, "--db", exploded.url])
        assert bad.exit_code == 1 and bad.output.startswith("error: --for"), bad.output
    both = runner.invoke(cli, ["silence", "boom", "--remove", "--for", "2h", "--db", exploded.url])
    assert both.exit_code == 1 and "takes no --for" in both.output
    out = runner.invoke(cli, ["silence", "boom", "--remove", "--db", exploded.url])
    assert "removed 1 silence(s)" in out.output


def test_commands_that_name_a_run_refuse_a_name_two_projects_use(runner, sqlite_db):
    from storage import runs, utcnow

    ours = make_run(sqlite_db, "baseline", project="alpha")
    theirs = make_run(sqlite_db, "baseline", project="beta")
    url = sqlite_db.url
    for args in (
        ["silence", "baseline"],
        ["evaluate", "--run", "baseline"],
        ["calibrate", "--runs", "baseline", "--dry-run"],
    ):
        out = runner.invoke(cli, [*args, "--db", url])
        assert out.exit_code == 1, (args, out.output)
        assert "used in projects alpha, beta" in out.output, (args, out.output)
    assert not store.active_silences(sqlite_db, utcnow())
    out = runner.invoke(cli, ["silence", "baseline", "--project", "alpha", "--db", url])
    assert out.exit_code == 0 and "(project alpha)" in out.output, out.output
    assert [s.run_id for s in store.active_silences(sqlite_db, utcnow())] == [ours]
    out = runner.invoke(cli, ["evaluate", "--run", "baseline", "--project", "beta", "--db", url])
    assert out.exit_code == 0, out.output
    assert runs.find_run(sqlite_db, "baseline", "beta").id == theirs


def test_alert_lines_name_the_project_of_a_run_outside_the_default_one(runner, sqlite_db):
    # Two teams' "baseline" runs read the same in the scheduler's log and evaluate's list.
    for project in ("alpha", "beta", "default"):
        run = make_run(sqlite_db, "baseline", project=project)
        write_steps(sqlite_db, run, {s: {"loss": float("nan")} for s in range(3)})
    url = sqlite_db.url
    listed = runner.invoke(cli, ["evaluate", "--db", url]).output
    ticked = runner.invoke(cli, ["scheduler", "--once", "--db", url]).output
    for label in ("alpha/baseline", "beta/baseline"):
        assert f"{label}\tstep 0\tcritical\tnon_finite" in listed, listed
        assert f"firing critical non_finite run={label} step=0" in ticked, ticked
    assert any(line.startswith("baseline\tstep 0") for line in listed.splitlines())  # default
    assert "run=baseline step=0" in ticked


@pytest.mark.parametrize("command", ["scheduler", "up"])
@pytest.mark.parametrize("interval", ["-1", "0", "nan", "inf", "1e300", "soon"])
def test_a_bad_interval_is_refused_before_anything_runs(runner, sqlite_db, command, interval):
    out = runner.invoke(cli, [command, "--interval", interval, "--db", sqlite_db.url])
    assert out.exit_code == 2 and "Invalid value for '--interval'" in out.output


def test_scheduler_once_evaluates_and_is_idempotent(runner, exploded):
    from storage import utcnow

    # "boom" and "calm" ended long ago: a new scheduler does not back-fill old history.
    old = runner.invoke(cli, ["scheduler", "--once", "--db", exploded.url])
    assert old.exit_code == 0 and old.output == ""
    scalars, layers = exploding_series(steps=300, blowup=200)
    run = make_run(exploded, "boom", layers=["fc", "ln_out"])
    write_steps(exploded, run, scalars, layers)
    finish_run(exploded, run, at=utcnow())
    first = runner.invoke(cli, ["scheduler", "--once", "--db", exploded.url])
    assert first.exit_code == 0, first.output
    assert "firing critical non_finite run=boom step=260" in first.output
    assert "[tripwire] FIRING critical non_finite" in first.output
    again = runner.invoke(cli, ["scheduler", "--once", "--db", exploded.url])
    assert again.exit_code == 0 and "firing" not in again.output
    seen, info = store.last_beat(exploded, "scheduler")
    assert info["runs"] == 0


def test_apscheduler_job_ticks_writes_heartbeats_and_logs_events_not_ticks(sqlite_db, caplog):
    from storage import utcnow

    aps_log = logging.getLogger("apscheduler")
    level = aps_log.level
    aps_log.setLevel(logging.NOTSET)  # as in a fresh process (another test may have built one)
    caplog.set_level(logging.INFO)
    run = make_run(sqlite_db, "nan-run", started_at=utcnow())
    write_steps(sqlite_db, run, {s: {"loss": float("nan")} for s in range(3)}, at=utcnow())
    service = AlertService(sqlite_db, parse_config({}), [])
    scheduler = build_scheduler(service, interval_s=0.2, blocking=False)
    jobs = scheduler.get_jobs()
    assert {job.id for job in jobs} == {"tripwire-alerts", "tripwire-notifications"}
    assert all(j.coalesce and j.max_instances == 1 and j.misfire_grace_time == 30 for j in jobs)
    scheduler.start()
    try:
        deadline = time.monotonic() + 20
        while service.ticks < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        scheduler.shutdown(wait=True)
        aps_log.setLevel(level)
    assert service.ticks >= 3
    assert [a.predictor for a in store.firing_alerts(sqlite_db, run)] == ["non_finite"]
    assert store.last_beat(sqlite_db, "scheduler") is not None
    # Its warnings stay (a tick skipped on a busy machine says so); its per-tick INFO lines go.
    chatter = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("apscheduler") and r.levelno < logging.WARNING
    ]
    assert not chatter, chatter
    ours = [r.getMessage() for r in caplog.records if r.name == "tripwire.alerts"]
    assert ours == ["firing non_finite nan-run step 0"], ours


@pytest.mark.slow
def test_keeps_up_with_100_live_runs(sqlite_db):
    from storage import utcnow

    scalars, layers = exploding_series(steps=70, blowup=1000)
    ids = [
        make_run(sqlite_db, f"many-{i}", layers=["fc", "ln_out"], started_at=utcnow())
        for i in range(100)
    ]
    for rid in ids:
        write_steps(sqlite_db, rid, {s: scalars[s] for s in range(60)}, layers, at=utcnow())
    service = AlertService(sqlite_db, parse_config({}), [])
    started = time.perf_counter()
    service.tick()
    first = time.perf_counter() - started
    for rid in ids:
        write_steps(sqlite_db, rid, {s: scalars[s] for s in range(60, 70)}, at=utcnow())
    started = time.perf_counter()
    service.tick()
    steady = time.perf_counter() - started
    cursors = store.eval_cursors(sqlite_db, ids)
    assert all(c.last_step == 68 for c in cursors.values())
    print(f"first tick {first:.2f} s, steady tick {steady:.2f} s")
    assert steady < 10.0, f"a tick over 100 live runs took {steady:.1f} s (first {first:.1f} s)"
