"""Every page renders without an exception on an empty database, a live run, a finished run
with alerts and a run full of NaN/Inf (Streamlit's AppTest: the real script, no browser)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.dashboard.markdown import shown

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboard"
PAGES = ("runs", "run", "alerts", "health")
TIMEOUT = 60
TITLES = {"live": "live-run", "alerts": "exploded", "nan": "nan-run"}


def _run(script: Path, query: dict | None = None) -> AppTest:
    at = AppTest.from_file(str(script), default_timeout=TIMEOUT)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    return at.run()


def _assert_clean(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not [e for e in at.error if "Cannot read" in e.value]


@pytest.mark.parametrize("page", PAGES)
def test_page_renders(scenario_db, page):
    _url, uid, scenario = scenario_db
    query = {"run": uid, "step": "30"} if page == "run" and uid else None
    at = _run(DASHBOARD / "views" / f"{page}.py", query)
    _assert_clean(at)
    if page == "run" and uid:
        charts = at.get("plotly_chart")
        assert len(charts) >= 5, f"{scenario}: {len(charts)} charts"
        assert shown(at.title[0].value) == TITLES[scenario]
    if page == "runs" and scenario != "empty":
        assert at.dataframe, "the runs table is missing"


def test_app_entry_serves_the_runs_page_by_default(scenario_db):
    at = _run(DASHBOARD / "app.py")
    _assert_clean(at)
    assert at.title[0].value == "Runs"


def test_password_gate_hides_the_dashboard(scenario_db, monkeypatch):
    monkeypatch.setenv("TRIPWIRE_DASHBOARD_PASSWORD", "s3cret-value")
    at = _run(DASHBOARD / "app.py")
    _assert_clean(at)
    assert not at.dataframe
    assert "s3cret-value" not in str(at.main)
    at.text_input[0].input("wrong")
    at.button[0].click().run()
    assert at.error and "Wrong password" in at.error[0].value
    at.text_input[0].input("s3cret-value")
    at.button[0].click().run()
    _assert_clean(at)
    assert at.title[0].value == "Runs"


def test_unknown_run_in_the_link_falls_back_with_a_warning(real_dbs, monkeypatch):
    monkeypatch.setenv("TRIPWIRE_DB_URL", real_dbs["live"][0])
    at = _run(DASHBOARD / "views" / "run.py", {"run": "no-such-run", "step": "x"})
    _assert_clean(at)
    assert any("'no-such-run'" in shown(w.value) for w in at.warning)


def test_run_link_by_name_and_alert_markers(real_dbs, monkeypatch):
    monkeypatch.setenv("TRIPWIRE_DB_URL", real_dbs["alerts"][0])
    at = _run(DASHBOARD / "views" / "run.py", {"run": "exploded", "step": "55"})
    _assert_clean(at)
    scalars = at.get("plotly_chart")[0].proto.spec
    assert "non_finite" in scalars and "critical alert" in scalars
    assert at.title[0].value == "exploded"
    # a finished run's alerts tell how it ended; they are not "open" for anyone to act on
    assert not [m for m in at.metric if m.label == "open alerts"]
    alerts_tile = next(m for m in at.metric if m.label == "alerts at end")
    # the most severe count fits the tile; the whole breakdown is its tooltip
    assert alerts_tile.value.endswith(" critical") and " · " not in alerts_tile.value
    assert alerts_tile.proto.help.startswith(alerts_tile.value + " · ")
    assert "still firing when the run ended" in alerts_tile.proto.help


def test_the_runs_table_marks_an_ended_runs_alerts(real_dbs, monkeypatch):
    monkeypatch.setenv("TRIPWIRE_DB_URL", real_dbs["alerts"][0])
    at = _run(DASHBOARD / "views" / "runs.py")
    _assert_clean(at)
    table = at.dataframe[0].value
    cell = table.loc[table["run"] == "exploded", "alerts"].item()
    assert "critical" in cell and cell.endswith(" (at end)")


def test_the_sa_caption_is_judged_once_not_on_every_click(real_dbs, monkeypatch):
    from dashboard import insights

    calls = []
    judge = insights.first_collapses
    monkeypatch.setattr(insights, "first_collapses", lambda grid: calls.append(1) or judge(grid))
    monkeypatch.setenv("TRIPWIRE_DB_URL", real_dbs["alerts"][0])
    at = _run(DASHBOARD / "views" / "run.py", {"run": "exploded"})
    _assert_clean(at)
    judged = len(calls)  # 0 when an earlier test already filled the cache
    captions = [c.value for c in at.caption if "First non-finite" in c.value]
    layer = next(s for s in at.selectbox if s.label == "Layer")
    layer.set_value(layer.options[-1]).run()
    _assert_clean(at)
    assert len(calls) == judged <= 1
    assert [c.value for c in at.caption if "First non-finite" in c.value] == captions != []


def test_a_live_runs_alerts_are_open(real_dbs, monkeypatch):
    url, uid = real_dbs["live"]
    monkeypatch.setenv("TRIPWIRE_DB_URL", url)
    at = _run(DASHBOARD / "views" / "run.py", {"run": uid})
    _assert_clean(at)
    assert [m.label for m in at.metric if "alerts" in m.label] == ["open alerts"]


def test_silencing_a_run_from_the_alerts_page(tmp_path, monkeypatch):
    from sample_runs import populate

    from storage import Database
    from storage.alerts import active_silences, unsilence_run
    from storage.db import utcnow

    url = f"sqlite:///{tmp_path / 'silence.db'}"
    db = Database(url)
    db.upgrade()
    populate(db, "alerts")
    run_id = 1
    unsilence_run(db, run_id)
    monkeypatch.setenv("TRIPWIRE_DB_URL", url)
    at = _run(DASHBOARD / "views" / "alerts.py")
    _assert_clean(at)
    form_run = next(s for s in at.selectbox if s.label == "Run" and s.options[0] != "(all)")
    form_run.set_value(run_id)
    at.number_input[0].set_value(3.0)
    next(t for t in at.text_input if t.label == "Reason").input("rerunning with a lower lr")
    next(b for b in at.button if b.label == "Silence").click()
    at.run()
    _assert_clean(at)
    assert any("Silenced" in s.value for s in at.success)
    (silence,) = active_silences(db, utcnow(), run_id)
    assert silence.reason == "rerunning with a lower lr" and silence.created_by == "dashboard"
    assert 2.9 * 3600 < (silence.until - utcnow()).total_seconds() <= 3 * 3600
    db.dispose()


def test_step_range_selector_narrows_every_chart(real_dbs, monkeypatch):
    import json

    url, uid = real_dbs["live"]
    monkeypatch.setenv("TRIPWIRE_DB_URL", url)
    at = _run(DASHBOARD / "views" / "run.py", {"run": uid})
    at.sidebar.slider[0].set_range(10, 30).run()
    _assert_clean(at)
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    loss = next(t for t in charts[0]["data"] if t.get("name") == "loss")
    assert min(loss["x"]) == 10 and max(loss["x"]) == 30
    heat = charts[1]["data"][0]
    assert heat["type"] == "heatmap" and min(heat["x"]) >= 10 and max(heat["x"]) <= 30


def test_an_unreachable_database_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("TRIPWIRE_DB_URL", "postgresql+psycopg://nobody:pw-secret@127.0.0.1:1/none")
    at = _run(DASHBOARD / "app.py")
    assert not at.exception
    assert at.error and "Cannot use the database" in at.error[0].value
    assert "pw-secret" not in shown(at.error[0].value)


def test_the_update_ratio_heatmap_shows_what_the_collector_measured(real_dbs, monkeypatch):
    import json

    url, uid = real_dbs["live"]
    monkeypatch.setenv("TRIPWIRE_DB_URL", url)
    at = _run(DASHBOARD / "views" / "run.py", {"run": uid})
    at.sidebar.radio[0].set_value("update_ratio").run()
    _assert_clean(at)
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    (heat,) = [
        s["data"][0]
        for s in specs
        if s["layout"].get("title", {}).get("text") == "update / weight per step"
    ]
    first, *later = zip(*heat["z"], strict=True)  # columns: checks
    assert all(v is None for v in first)  # nothing to compare with at the first check
    log10 = [v for column in later for v in column]
    assert log10 and all(-6 < v < 0 for v in log10)  # coloured by log10 of a ratio below 1


def test_logged_logit_signals_are_plotted_and_any_user_scalar_can_be(tmp_path, monkeypatch):
    import json

    import collector
    from tripwire.demo_training import DemoConfig, train

    url = f"sqlite:///{tmp_path / 'signals.db'}"
    config = DemoConfig(
        steps=21, warmup_steps=5, batch_size=4, block_size=32, n_layer=1, n_head=2, d_model=32
    )
    monitors = []

    class Loop:  # the demo's monitor, plus a scalar of the user's own
        def __init__(self, model):
            self.monitor = collector.watch(
                model, run="signals", db=url, every=10, spool_dir=tmp_path
            )
            monitors.append(self.monitor)

        def is_check_step(self, step):
            return self.monitor.is_check_step(step)

        def log(self, step, loss, lr, **signals):
            self.monitor.log(step, loss=loss, lr=lr, tokens=128.0 * (step + 1), **signals)

    train(config, watch=Loop)
    monitors[0].close()
    monkeypatch.setenv("TRIPWIRE_DB_URL", url)
    at = _run(DASHBOARD / "views" / "run.py", {"run": "signals"})
    _assert_clean(at)
    more = next(m for m in at.sidebar.multiselect if m.label == "More scalars")
    assert sorted(more.options) == [
        "Tripwire's check (ms of the training thread)",
        "largest attention logit",
        "output log Z",
        "tokens",
        "weight norm",
    ]
    assert sorted(more.value) == ["attn_logit_max", "log_z"]  # the predictors' signals, shown

    def titles():
        layout = json.loads(at.get("plotly_chart")[0].proto.spec)["layout"]
        return [a["text"] for a in layout["annotations"] if a.get("text")]

    assert {"largest attention logit", "output log Z"} <= set(titles())
    more.set_value(["tokens"]).run()
    _assert_clean(at)
    more = next(m for m in at.sidebar.multiselect if m.label == "More scalars")
    assert more.value == ["tokens"]
    assert "tokens" in titles() and "output log Z" not in titles()


def test_the_runs_page_calls_a_run_stalled_when_the_stalled_rule_would(tmp_path, monkeypatch):
    from datetime import timedelta

    from dashboard import queries
    from storage import Database, runs
    from storage.db import utcnow

    url = f"sqlite:///{tmp_path / 'quiet.db'}"
    db = Database(url)
    db.upgrade()
    ten_minutes_ago = utcnow() - timedelta(minutes=10)
    with db.session() as s:
        run_id = runs.ensure_run(s, uid="q", project="p", name="quiet", started_at=ten_minutes_ago)
        runs.touch(s, run_id, last_step=5, at=ten_minutes_ago)
    db.dispose()
    patient = tmp_path / "patient.toml"
    patient.write_text("[predictors.stalled]\nafter_s = 3600\n")
    monkeypatch.setenv("TRIPWIRE_DB_URL", url)

    def shown() -> tuple[str, str]:
        queries.stalled_after_s.clear()
        queries.runs_overview.clear()
        at = _run(DASHBOARD / "views" / "runs.py")
        _assert_clean(at)
        return at.dataframe[0].value["status"].item(), at.caption[0].value

    monkeypatch.delenv("TRIPWIRE_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)  # no tripwire.toml here
    status, caption = shown()
    assert status == "stalled" and caption.endswith("stalled: running, silent over 5m 00s")
    assert caption.startswith("1 run · 0 live")  # one run, not "1 runs"; a stalled one is not live
    monkeypatch.setenv("TRIPWIRE_CONFIG", str(patient))
    status, caption = shown()
    assert status == "running" and caption.endswith("stalled: running, silent over 1h 00m")


def _sample_db(tmp_path, monkeypatch, name: str):
    from storage import Database

    url = f"sqlite:///{tmp_path / f'{name}.db'}"
    db = Database(url)
    db.upgrade()
    monkeypatch.setenv("TRIPWIRE_DB_URL", url)
    return db


def test_runs_of_one_name_can_be_told_apart_in_every_picker(tmp_path, monkeypatch):
    # A resumed run or a second trainer.train() makes another run of the same name.
    from datetime import timedelta

    from sample_runs import write_run

    from storage.db import utcnow

    db = _sample_db(tmp_path, monkeypatch, "twins")
    for uid, hours in (("0a1b2c3d4e", 5), ("9f8e7d6c5b", 1)):
        started = utcnow() - timedelta(hours=hours)
        write_run(db, name="gpt", steps=30, uid=uid, status="finished", started=started)
    db.dispose()
    at = _run(DASHBOARD / "views" / "run.py", {"run": "0a1b2c3d4e"})
    _assert_clean(at)
    (picker,) = [s for s in at.sidebar.selectbox if s.label == "Run"]
    assert len(set(picker.options)) == 2 and {o.split(" · ")[0] for o in picker.options} == {"gpt"}
    assert any(o.endswith(" · 0a1b2c") for o in picker.options)
    at = _run(DASHBOARD / "views" / "alerts.py")
    _assert_clean(at)
    pickers = [s for s in at.selectbox if s.label == "Run"]
    assert len(pickers) == 2  # the filter and the silence form
    for picker in pickers:
        runs = [o for o in picker.options if o != "(all)"]
        assert len(runs) == len(set(runs)) == 2


def test_alerts_name_their_runs_project_also_of_runs_past_the_pickers(tmp_path, monkeypatch):
    # Two teams both call a run "baseline"; a sweep of newer runs then pushes both past the
    # newest few hundred the pickers list.
    import json
    from datetime import timedelta

    from sample_runs import add_alerts

    from storage import runs
    from storage.db import utcnow

    db = _sample_db(tmp_path, monkeypatch, "teams")
    old = utcnow() - timedelta(days=1)
    ids = []
    for project in ("alpha", "beta"):
        with db.session() as s:
            ids.append(
                runs.ensure_run(
                    s, uid=f"uid-{project}", project=project, name="baseline", started_at=old
                )
            )
    for run_id in ids:
        add_alerts(db, run_id, 299)
    with db.session() as s:
        for i in range(600):
            runs.ensure_run(
                s, uid=f"sweep-{i}", project="sweep", name=f"lr-{i}", started_at=utcnow()
            )
    db.dispose()
    at = _run(DASHBOARD / "views" / "alerts.py")
    _assert_clean(at)
    table = at.dataframe[0].value
    assert set(zip(table["run"], table["project"], strict=True)) == {
        ("baseline", "alpha"),
        ("baseline", "beta"),
    }
    assert {link.split("&")[0] for link in table["open"]} == {
        "run?run=uid-alpha",
        "run?run=uid-beta",
    }
    (timeline,) = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    lanes = {y for trace in timeline["data"] for y in trace["y"] if y}
    assert {lane.split(" · sa_collapse")[0] for lane in lanes if "sa_collapse" in lane} == {
        "baseline · alpha",
        "baseline · beta",
    }
    silenced = [m.value for m in at.markdown if m.value.startswith("Silenced:")]
    assert len(silenced) == 2 and all("baseline · " in m for m in silenced), silenced
    assert any("alpha" in m for m in silenced) and any("beta" in m for m in silenced)


def test_a_finished_run_without_monitored_layers_says_why_its_charts_are_empty(
    tmp_path, monkeypatch
):
    import json

    from sample_runs import write_run

    from dashboard import figures

    db = _sample_db(tmp_path, monkeypatch, "nolayers")
    write_run(db, name="no-layers", steps=60, layers=(), status="finished")
    db.dispose()
    at = _run(DASHBOARD / "views" / "run.py", {"run": "no-layers"})
    _assert_clean(at)
    notes = [
        a["text"]
        for chart in at.get("plotly_chart")
        for a in json.loads(chart.proto.spec)["layout"].get("annotations", [])
    ]
    assert not [n for n in notes if "yet" in n]
    assert sum(n.endswith(figures.NO_LAYER_STATS) for n in notes) == 2  # SA and per-layer maps
    assert any(n.startswith("no gradient norm: ") and "monitored layers" in n for n in notes)


def _app_page(page: str, query: dict) -> AppTest:
    """A page through the entry point, as a browser reaches it (page links need navigation)."""
    at = AppTest.from_file(str(DASHBOARD / "app.py"), default_timeout=TIMEOUT)
    for key, value in query.items():
        at.query_params[key] = value
    at.switch_page(f"views/{page}.py")
    return at.run()


def test_a_link_by_a_name_two_projects_use_lists_both(tmp_path, monkeypatch):
    from storage import runs
    from storage.db import utcnow

    db = _sample_db(tmp_path, monkeypatch, "two-teams")
    for project in ("alpha", "beta"):
        with db.session() as s:
            runs.ensure_run(
                s, uid=f"uid-{project}", project=project, name="baseline", started_at=utcnow()
            )
    db.dispose()
    at = _app_page("run", {"run": "baseline"})
    _assert_clean(at)
    assert at.title[0].value == "2 runs are named baseline"
    links = at.get("page_link")
    assert {link.proto.query_string for link in links} == {"run=uid-alpha", "run=uid-beta"}
    assert {shown(link.proto.label).split(" · ")[0] for link in links} == {"alpha", "beta"}


def test_a_link_by_a_name_reruns_share_lists_them_newest_first(tmp_path, monkeypatch):
    # W&B and MLflow treat a run name as a label, never as an id: a link by a name three runs
    # share must not open one of them as if it were the only one.
    from datetime import timedelta

    from sample_runs import write_run

    from storage.db import utcnow

    db = _sample_db(tmp_path, monkeypatch, "reruns")
    for uid, hours, status in (
        ("first", 30, "failed"),
        ("second", 20, "finished"),
        ("third", 1, "running"),
    ):
        write_run(
            db,
            name="gpt",
            steps=30,
            uid=uid,
            status=status,
            started=utcnow() - timedelta(hours=hours),
        )
    db.dispose()
    at = _app_page("run", {"run": "gpt", "step": "12", "layer": "blocks.0.mlp.fc"})
    _assert_clean(at)
    assert at.title[0].value == "3 runs are named gpt"
    assert not at.get("plotly_chart")  # no run's charts as if it were the one meant
    links = at.get("page_link")
    assert [link.proto.query_string for link in links] == [
        f"run={uid}&step=12&layer=blocks.0.mlp.fc" for uid in ("third", "second", "first")
    ]
    labels = [shown(link.proto.label) for link in links]
    assert [label.split(" · ")[2] for label in labels] == ["running", "finished", "failed"]
    assert all(label.startswith("demo · started ") and " UTC · " in label for label in labels)
    # by uid, or by a name only one run has, the page opens the run
    at = _app_page("run", {"run": "second"})
    _assert_clean(at)
    assert at.title[0].value == "gpt" and "second" in at.caption[0].value


def test_run_pickers_find_runs_past_the_newest_500(tmp_path, monkeypatch):
    from sample_runs import needle_among_many

    db = _sample_db(tmp_path, monkeypatch, "many")
    needle_among_many(db)
    db.dispose()
    at = _run(DASHBOARD / "views" / "run.py", {"run": "sweep-0"})
    _assert_clean(at)
    (picker,) = [s for s in at.sidebar.selectbox if s.label == "Run"]
    assert len(picker.options) == 500 and not any("Needle" in o for o in picker.options)
    for query in ("needle", "ARCHIVE"):
        at.sidebar.text_input(key="run-search").input(query).run()
        _assert_clean(at)
        (picker,) = [s for s in at.sidebar.selectbox if s.label == "Run"]
        assert [o.split(" · ")[0] for o in picker.options] == [
            "lr-0",
            "Old-Needle",
        ]  # + the open run
    picker.set_value("needle").run()
    _assert_clean(at)
    assert shown(at.title[0].value) == "Old-Needle"

    at = _run(DASHBOARD / "views" / "alerts.py")
    _assert_clean(at)
    for key in ("alerts-run-search", "silence-search"):
        at.text_input(key=key).input("needle").run()
    _assert_clean(at)
    pickers = [s for s in at.selectbox if s.label == "Run"]
    assert len(pickers) == 2  # the filter and the silence form
    for picker in pickers:
        (found,) = [o for o in picker.options if o != "(all)"]
        assert found.startswith("Old-Needle · Archive · ")


def test_deleting_needs_the_runs_name_and_an_ended_run(tmp_path, monkeypatch):
    from sample_runs import write_run

    from storage import runs
    from storage.db import utcnow

    db = _sample_db(tmp_path, monkeypatch, "delete")
    write_run(db, name="scratch", steps=30, status="finished")
    live = write_run(db, name="live", steps=30)
    with db.session() as s:
        runs.touch(s, live, last_step=29, at=utcnow())
    at = _run(DASHBOARD / "views" / "run.py", {"run": "scratch"})
    _assert_clean(at)
    at.text_input(key=f"delete-confirm-{runs.find_run(db, 'scratch').id}").input("scratc")
    next(b for b in at.button if b.label == "Delete this run").click()
    at.run()
    assert any("does not match" in e.value for e in at.error)
    assert runs.find_run(db, "scratch").status == "finished"  # still there
    at = _run(DASHBOARD / "views" / "run.py", {"run": "live"})
    _assert_clean(at)
    assert not [b for b in at.button if b.label == "Delete this run"]
    assert any("still reporting" in i.value for i in at.info)
    db.dispose()


def test_alerts_about_steps_a_resume_replaced_are_not_drawn_on_the_new_curve(tmp_path, monkeypatch):
    import math

    from alerts.config import parse_config
    from alerts.notifiers import ConsoleNotifier, Route
    from alerts.service import AlertService
    from tests.integrations.test_rewind import _ended, _start, _steps, _write

    db = _sample_db(tmp_path, monkeypatch, "resumed")
    service = AlertService(db, parse_config({}), [Route(ConsoleNotifier())])
    blowup = _steps(range(30), loss=lambda s: math.nan if s >= 25 else 1.0)
    _write(db, "resumed", [_start("resumed"), blowup, _ended()], tmp_path)
    service.tick()
    fine = _steps(range(20, 40), loss=lambda s: 1.0)
    _write(db, "resumed", [_start("resumed"), ("rewind", {"from_step": 20}), fine], tmp_path)
    service.tick()
    db.dispose()
    at = _run(DASHBOARD / "views" / "run.py", {"run": "resumed"})
    _assert_clean(at)
    assert "non_finite" not in at.get("plotly_chart")[0].proto.spec
    (state,) = at.dataframe[0].value["state"]
    assert state == "resolved: the run went back to step 20"


def test_the_alerts_timeline_keeps_reruns_of_one_name_apart(tmp_path, monkeypatch):
    import json

    from sample_runs import add_alerts

    from storage import runs
    from storage.db import utcnow

    db = _sample_db(tmp_path, monkeypatch, "reruns")
    for uid in ("aaaaaaaa1111", "bbbbbbbb2222"):  # `trainer.train()` twice: two runs, one name
        with db.session() as s:
            run_id = runs.ensure_run(s, uid=uid, project="p", name="gpt", started_at=utcnow())
        add_alerts(db, run_id, 299)
    db.dispose()
    at = _run(DASHBOARD / "views" / "alerts.py")
    _assert_clean(at)
    (timeline,) = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    lanes = {y for trace in timeline["data"] for y in trace["y"] if y}
    assert {lane.split(" · sa_collapse")[0] for lane in lanes if "sa_collapse" in lane} == {
        "gpt · p · aaaaaaaa",
        "gpt · p · bbbbbbbb",
    }
