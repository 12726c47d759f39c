"""`tripwire db`, `tripwire runs`, `tripwire export`, run as a user would (a subprocess)."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from datetime import timedelta

import pandas as pd
import torch
from torch import nn

import collector


def tripwire(
    *args: str, env_db: str | None = None, answer: str | None = None, config: str | None = None
) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ)
    if env_db is not None:
        env["TRIPWIRE_DB_URL"] = env_db
    if config is not None:
        env["TRIPWIRE_CONFIG"] = config
    return subprocess.run(
        [sys.executable, "-m", "tripwire", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        input=answer,
    )


def _names(url: str) -> list[str]:
    return sorted(
        item["name"] for item in json.loads(tripwire("runs", "--json", "--db", url).stdout)
    )


def _record_run(url: str, tmp_path, name: str = "cli-run") -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with collector.watch(
        model, run=name, project="cli", db=url, every=5, spool_dir=tmp_path
    ) as monitor:
        for step in range(12):
            x = torch.randn(8, 6)
            loss = model(x).pow(2).mean()
            loss.backward()
            extra = {"spike": float("inf") if step == 3 else 1.0} if step % 3 == 0 else {}
            monitor.log(
                step, loss=loss if step != 7 else torch.tensor(float("nan")), lr=0.01, **extra
            )
            opt.step()
            opt.zero_grad()


def test_db_upgrade_then_status(sqlite_url):
    first = tripwire("db", "upgrade", "--db", sqlite_url)
    assert first.returncode == 0 and "upgraded" in first.stdout
    again = tripwire("db", "upgrade", "--db", sqlite_url)
    assert "already at" in again.stdout
    status = tripwire("db", "status", "--db", sqlite_url)
    assert status.returncode == 0 and "up to date" in status.stdout


def test_db_status_exits_1_and_names_the_fix_unless_up_to_date(sqlite_url, tmp_path):
    import sqlite3

    tripwire("db", "upgrade", "--db", sqlite_url)
    with sqlite3.connect(tmp_path / "tripwire.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099_future'")
    newer = tripwire("db", "status", "--db", sqlite_url)
    assert newer.returncode == 1 and "newer than this Tripwire: upgrade Tripwire" in newer.stdout
    with sqlite3.connect(tmp_path / "tripwire.db") as conn:
        conn.execute("DELETE FROM alembic_version")
    empty = tripwire("db", "status", "--db", sqlite_url)
    assert empty.returncode == 1 and "needs `tripwire db upgrade`" in empty.stdout


def test_runs_json_lists_name_project_status_last_step(sqlite_url, tmp_path):
    _record_run(sqlite_url, tmp_path)
    result = tripwire("runs", "--json", env_db=sqlite_url)  # the URL from TRIPWIRE_DB_URL
    assert result.returncode == 0, result.stderr
    (run,) = json.loads(result.stdout)
    assert run["name"] == "cli-run" and run["project"] == "cli"
    assert run["status"] == "finished" and run["last_step"] == 11
    table = tripwire("runs", "--db", sqlite_url)
    assert "cli-run" in table.stdout and "finished" in table.stdout


def test_export_uses_the_contract_column_names_in_every_format(sqlite_url, tmp_path):
    _record_run(sqlite_url, tmp_path)
    scalars = tripwire("export", "--run", "cli-run", "--db", sqlite_url)
    assert scalars.returncode == 0, scalars.stderr
    frame = pd.read_csv(io.StringIO(scalars.stdout))
    assert list(frame.columns[:7]) == [
        "run",
        "step",
        "wall_time",
        "loss",
        "lr",
        "grad_norm",
        "weight_norm",
    ]
    assert len(frame) == 12 and math.isnan(frame.loc[frame.step == 7, "loss"].item())
    # NaN and Inf as stored, apart from what was never logged (an empty cell / null)
    rows = {line.split(",")[1]: line for line in scalars.stdout.splitlines()[1:]}
    spike = list(frame.columns).index("spike")
    assert rows["7"].split(",")[3] == "nan" and rows["7"].split(",")[spike] == ""
    assert rows["3"].split(",")[spike] == "inf" and rows["6"].split(",")[spike] == "1.0"
    as_json = tripwire("export", "--run", "cli-run", "--format", "json", "--db", sqlite_url)
    by_step = {r["step"]: r for r in json.loads(as_json.stdout)}
    assert by_step[7]["loss"] == "nan" and by_step[7]["spike"] is None
    assert by_step[3]["spike"] == "inf" and by_step[6]["spike"] == 1.0
    scalars_parquet = tmp_path / "scalars.parquet"
    tripwire(
        "export",
        "--run",
        "cli-run",
        "--format",
        "parquet",
        "-o",
        str(scalars_parquet),
        "--db",
        sqlite_url,
    )
    import pyarrow.parquet as pq

    stored = pq.read_table(scalars_parquet).to_pydict()
    seven = stored["step"].index(7)
    assert math.isnan(stored["loss"][seven]) and stored["spike"][seven] is None

    layers = tripwire(
        "export", "--run", "cli-run", "--what", "layers", "--format", "json", "--db", sqlite_url
    )
    records = json.loads(layers.stdout)
    assert {r["layer"] for r in records} == {"0", "2"} and {r["step"] for r in records} == {
        0,
        5,
        10,
    }
    assert {"run", "step", "layer", "sigma1", "sa_imbalance", "sa_hist"} <= records[0].keys()

    out = tmp_path / "layers.parquet"
    parquet = tripwire(
        "export",
        "--run",
        "cli-run",
        "--what",
        "layers",
        "--format",
        "parquet",
        "-o",
        str(out),
        "--db",
        sqlite_url,
    )
    assert parquet.returncode == 0, parquet.stderr
    assert len(pd.read_parquet(out)) == 6

    alerts = tripwire("export", "--run", "cli-run", "--what", "alerts", "--db", sqlite_url)
    assert alerts.stdout.startswith("run,predictor,severity,step,layer,message")
    tripwire("evaluate", "--db", sqlite_url)  # stores nothing; the scheduler would:
    tripwire("scheduler", "--once", "--db", sqlite_url)
    fired = tripwire(
        "export", "--run", "cli-run", "--what", "alerts", "--format", "json", "--db", sqlite_url
    )
    (nan_loss,) = [a for a in json.loads(fired.stdout) if a["predictor"] == "non_finite"]
    assert nan_loss["step"] == 7 and isinstance(nan_loss["resolved_step"], int)  # not 10.0


def test_export_run_gives_its_metadata_and_the_sa_bin_edges(sqlite_url, tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 1))
    config = {"lr": 0.01, "optimizer": {"name": "sgd", "momentum": 0.9}, "warmup": float("nan")}
    with collector.watch(
        model, run="meta", project="cli", db=sqlite_url, every=5, spool_dir=tmp_path,
        config=config, tags=["baseline", "seed0"],
    ) as monitor:  # fmt: skip
        for step in range(6):
            loss = model(torch.randn(8, 6)).pow(2).mean()
            loss.backward()
            monitor.log(step, loss=loss)

    as_json = tripwire(
        "export", "--run", "meta", "--what", "run", "--format", "json", "--db", sqlite_url
    )
    assert as_json.returncode == 0, as_json.stderr
    (run,) = json.loads(as_json.stdout)
    assert run["config"] == {
        "lr": 0.01,
        "optimizer": {"name": "sgd", "momentum": 0.9},
        "warmup": "nan",
    }
    assert run["tags"] == ["baseline", "seed0"] and run["status"] == "finished"
    assert run["project"] == "cli" and run["last_step"] == 5 and run["every"] == 5
    edges = run["sa_bin_edges"]
    assert len(edges) == 41 and edges[0] == -1.0 and edges[-1] == 1.0
    assert [(x["name"], x["kind"], x["shape"]) for x in run["layers"]] == [
        ("0", "Linear", [16, 6]),
        ("2", "Linear", [1, 16]),
    ]

    as_csv = tripwire("export", "--run", "meta", "--what", "run", "--db", sqlite_url)
    (row,) = pd.read_csv(io.StringIO(as_csv.stdout)).to_dict(orient="records")
    assert json.loads(row["config"]) == run["config"] and json.loads(row["tags"]) == run["tags"]
    assert json.loads(row["sa_bin_edges"]) == edges

    out = tmp_path / "run.parquet"
    parquet = tripwire(
        "export", "--run", "meta", "--what", "run", "--format", "parquet", "-o", str(out),
        "--db", sqlite_url,
    )  # fmt: skip
    assert parquet.returncode == 0, parquet.stderr
    (stored,) = pd.read_parquet(out).to_dict(orient="records")
    assert json.loads(stored["config"]) == run["config"] and list(stored["tags"]) == run["tags"]
    assert list(stored["sa_bin_edges"]) == edges


def test_errors_are_one_line(sqlite_url, pg_url, tmp_path):
    for command in (["runs"], ["export", "--run", "x"], ["evaluate"], ["db", "status"]):
        typo = tripwire(*command, "--db", f"sqlite:///{tmp_path / 'typo' / 'runs.db'}")
        assert typo.returncode == 1 and typo.stderr.startswith("error: no database at "), command
        assert not (tmp_path / "typo").exists()  # reading creates nothing
    for url, says in (("notaurl", "not a database URL"), ("mysql://u@h/db", "no driver for it")):
        bad = tripwire("runs", "--db", url)
        assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
        assert bad.stderr.startswith("error: ") and says in bad.stderr
    tripwire("db", "upgrade", "--db", sqlite_url)
    missing = tripwire("export", "--run", "nope", "--db", sqlite_url)
    assert missing.returncode == 1 and missing.stderr.strip() == "error: no run named 'nope'"
    unmigrated = tripwire("runs", "--db", pg_url)  # PostgreSQL is never upgraded implicitly
    assert unmigrated.returncode == 1
    assert (
        len(unmigrated.stderr.strip().splitlines()) == 1
        and "tripwire db upgrade --db" in unmigrated.stderr
    )


def test_a_run_name_with_a_newline_stays_on_its_line_and_output_needs_its_directory(
    sqlite_url, tmp_path
):
    _record_run(sqlite_url, tmp_path, name="lr3e-3\nseed1")
    table = tripwire("runs", "--db", sqlite_url).stdout.splitlines()
    assert len(table) == 2 and table[1].startswith("lr3e-3\\nseed1 ")
    (listed,) = json.loads(tripwire("runs", "--json", "--db", sqlite_url).stdout)
    assert listed["name"] == "lr3e-3\nseed1"  # JSON keeps it as it is
    nowhere = tripwire(
        "export", "--run", "lr3e-3\nseed1", "-o", str(tmp_path / "no" / "x.csv"), "--db", sqlite_url
    )
    assert nowhere.returncode == 1 and nowhere.stderr.startswith("error: --output: no directory")
    nowhere = tripwire(
        "export", "--run", "lr3e-3\nseed1", "--format", "parquet", "-o", str(tmp_path / "no" / "x"),
        "--db", sqlite_url,
    )  # fmt: skip
    assert nowhere.returncode == 1 and nowhere.stderr.startswith("error: --output: no directory")


def test_runs_delete_asks_first_then_deletes_the_named_run(sqlite_url, tmp_path):
    _record_run(sqlite_url, tmp_path, name="scratch")
    _record_run(sqlite_url, tmp_path, name="keeper")
    declined = tripwire("runs", "delete", "scratch", "--db", sqlite_url, answer="n\n")
    assert declined.returncode == 1 and "scratch  (cli, finished, step 11)" in declined.stdout
    assert _names(sqlite_url) == ["keeper", "scratch"]
    done = tripwire("runs", "delete", "scratch", "--db", sqlite_url, answer="y\n")
    assert done.returncode == 0 and "deleted 1 run" in done.stdout
    assert _names(sqlite_url) == ["keeper"]
    missing = tripwire("runs", "delete", "scratch", "--db", sqlite_url, "--yes")
    assert missing.returncode == 1 and missing.stderr.strip() == "error: no run named 'scratch'"


def test_runs_delete_by_age_and_never_a_run_that_still_reports(db_url):
    from storage import Database, runs, utcnow

    db = Database(db_url)
    db.upgrade()
    now = utcnow()
    with db.session() as s:
        for name, age_days, ended in (("old", 40, True), ("recent", 1, True), ("live", 40, False)):
            at = now - timedelta(days=age_days)
            run_id = runs.ensure_run(s, uid=name, project="p", name=name, started_at=at)
            if ended:
                runs.finish(s, run_id, status="finished", at=at)
            else:  # started long ago and still sending heartbeats
                runs.touch(s, run_id, last_step=5, at=now)
    refused = tripwire("runs", "delete", "live", "old", "--yes", "--db", db_url)
    assert refused.returncode == 1 and "still reporting, not deleted: live" in refused.stderr
    assert _names(db_url) == ["live", "old", "recent"]  # nothing deleted
    aged = tripwire("runs", "delete", "--older-than", "30", "--yes", "--db", db_url)
    assert aged.returncode == 0 and "deleted 1 run " in aged.stdout
    assert _names(db_url) == ["live", "recent"]
    everything = tripwire("runs", "delete", "--older-than", "0", "--yes", "--db", db_url)
    assert everything.returncode == 0 and "deleted 1 run " in everything.stdout  # not "live"
    assert _names(db_url) == ["live"]
    both = tripwire("runs", "delete", "live", "--older-than", "30", "--db", db_url)
    assert both.returncode == 1 and "not both" in both.stderr
    db.dispose()


def test_runs_lists_the_newest_up_to_a_limit_and_filters_by_status(sqlite_url):
    from storage import Database, runs, utcnow

    db = Database(sqlite_url)
    db.upgrade()
    now = utcnow()
    with db.session() as s:  # newest first, an hour apart: live, silent, done-2, done-1, done-0
        for age, name in enumerate(["live", "silent", "done-2", "done-1", "done-0"]):
            at = now - timedelta(hours=age)
            run_id = runs.ensure_run(s, uid=name, project="p", name=name, started_at=at)
            if name.startswith("done"):
                runs.finish(s, run_id, status="finished", at=at)
            else:  # "silent" last reported 10 minutes ago: stalled
                runs.touch(s, run_id, last_step=1, at=now - timedelta(minutes=10 * age))
    db.dispose()
    two = tripwire("runs", "--limit", "2", "--db", sqlite_url)
    lines = two.stdout.splitlines()
    assert [line.split()[0] for line in lines[1:3]] == ["live", "silent"]
    assert lines[3] == "(the newest 2 runs shown; --limit 0 lists them all)"
    every = json.loads(tripwire("runs", "--limit", "0", "--json", "--db", sqlite_url).stdout)
    assert len(every) == 5
    by_status = {
        status: [
            r["name"]
            for r in json.loads(
                tripwire("runs", "--status", status, "--json", "--db", sqlite_url).stdout
            )
        ]
        for status in ("running", "stalled", "finished", "failed")
    }
    assert by_status == {
        "running": ["live"],
        "stalled": ["silent"],
        "finished": ["done-2", "done-1", "done-0"],
        "failed": [],
    }


def test_runs_call_a_run_stalled_when_the_stalled_rule_would(sqlite_url, tmp_path):
    from storage import Database, runs, utcnow

    db = Database(sqlite_url)
    db.upgrade()
    ten_minutes_ago = utcnow() - timedelta(minutes=10)  # past the default 300 s
    with db.session() as s:
        run_id = runs.ensure_run(
            s, uid="quiet", project="p", name="quiet", started_at=ten_minutes_ago
        )
        runs.touch(s, run_id, last_step=5, at=ten_minutes_ago)
    db.dispose()
    patient = tmp_path / "patient.toml"
    patient.write_text("[predictors.stalled]\nafter_s = 3600\n")
    broken = tmp_path / "broken.toml"
    broken.write_text("[predictors.stalled]\nafter_s = -1\n")

    def status(config: str | None = None) -> str:
        listed = tripwire("runs", "--json", "--db", sqlite_url, config=config)
        assert listed.returncode == 0, listed.stderr
        return json.loads(listed.stdout)[0]["status"]

    assert status() == "stalled"
    assert status(str(patient)) == "running"
    refused = tripwire("runs", "delete", "quiet", "--yes", "--db", sqlite_url, config=str(patient))
    assert refused.returncode == 1 and "still reporting" in refused.stderr
    shown = tripwire("runs", "--db", sqlite_url, config=str(broken))
    assert shown.returncode == 0 and "stalled" in shown.stdout
    assert "predictors.stalled.after_s" in shown.stderr and "300 s (the default)" in shown.stderr
