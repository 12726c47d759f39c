"""The cached query layer on the real-run databases (called outside a Streamlit server)."""

from __future__ import annotations

import math

from dashboard import queries


def test_runs_overview_of_a_real_exploded_run(real_dbs):
    url, uid = real_dbs["alerts"]
    rows = {r["name"]: r for r in queries.runs_overview(url)}
    assert set(rows) == {"exploded", "baseline"}
    exploded = rows["exploded"]
    assert exploded["uid"] == uid and exploded["status"] == "finished"
    assert exploded["last_step"] == 79 and math.isnan(exploded["last_loss"])
    assert exploded["critical"] >= 1  # the real non-finite alert
    assert math.isfinite(rows["baseline"]["last_loss"])


def test_series_of_a_real_run_are_keyed_by_version(real_dbs):
    url, uid = real_dbs["live"]
    run = queries.find_run(url, uid)
    layers = queries.layer_names(url, run["id"])
    assert layers == ["0", "2", "4"]  # the MLP's Linear layers, in model order
    grids = queries.layer_grids(url, run["id"], ("sa_imbalance",), None, None, (39, "running"))
    assert grids["sa_imbalance"].layers == layers
    assert grids["sa_imbalance"].steps == list(range(0, 40, 5))
    hist = queries.sa_hist(url, run["id"], "2", None, None, (39, "running"))
    assert len(hist.steps) == 8 and all(sum(c) > 0 for c in hist.counts)


def test_health_reports_scheduler_and_failed_deliveries(real_dbs):
    url, _ = real_dbs["alerts"]
    info = queries.health(url)
    assert info["ok"] and info["error"] is None and info["schema"] == info["head"]
    assert info["scheduler"] is not None
    assert [n.error for n in info["failed"]] == ["HTTP 500 from hooks.slack.com"]


def test_health_of_an_unreachable_database_is_an_error_not_a_crash():
    info = queries.health("postgresql+psycopg://nobody:secret-pw@127.0.0.1:1/none")
    assert not info["ok"] and info["error"]
    assert "secret-pw" not in info["url"] and "secret-pw" not in info["error"]


def test_refresh_slows_down_for_huge_live_runs():
    assert queries.refresh_seconds(1_000, 10, 48) == queries.LIVE_TTL_S
    assert queries.refresh_seconds(50_000, 10, 100) == 15
    assert queries.refresh_seconds(100_000, 10, 200) == 60
    assert queries.refresh_seconds(None, None, 0) == queries.LIVE_TTL_S


def test_run_choices_search_any_run_by_part_of_its_name_or_project(db_url):
    # More runs than a picker lists: the search goes to SQL, not through the newest few hundred.
    from datetime import timedelta

    from storage import Database, runs
    from storage.db import utcnow

    db = Database(db_url)
    db.upgrade()
    now = utcnow()
    with db.session() as s:
        runs.ensure_run(
            s,
            uid="old",
            project="Vision-Team",
            name="ResNet_50%",
            started_at=now - timedelta(days=9),
        )
        runs.ensure_run(
            s,
            uid="older",
            project="nlp",
            name="resnet-ablation",
            started_at=now - timedelta(days=10),
        )
        for i in range(queries.PICKER_LIMIT + 20):
            runs.ensure_run(
                s,
                uid=f"sweep-{i}",
                project="sweep",
                name=f"lr-{i}",
                started_at=now - timedelta(seconds=i),
            )
    db.dispose()
    assert len(queries.run_choices(db_url)) == queries.PICKER_LIMIT
    assert "old" not in {c["uid"] for c in queries.run_choices(db_url)}
    assert [c["uid"] for c in queries.run_choices(db_url, "RESNET")] == [
        "old",
        "older",
    ]  # newest first
    assert [c["uid"] for c in queries.run_choices(db_url, "vision-team")] == ["old"]  # the project
    assert [c["uid"] for c in queries.run_choices(db_url, "50%")] == ["old"]  # % is literal
    assert [c["uid"] for c in queries.run_choices(db_url, "res_et")] == []  # and _ is no wildcard
    assert [c["uid"] for c in queries.run_choices(db_url, "  lr-51  ")] == [
        "sweep-51",
        "sweep-510",
        "sweep-511",
        "sweep-512",
        "sweep-513",
        "sweep-514",
        "sweep-515",
        "sweep-516",
        "sweep-517",
        "sweep-518",
        "sweep-519",
    ]
    assert [c["uid"] for c in queries.runs_named(db_url, "resnet-ablation")] == ["older"]
