"""Migrations and the schema check, on both backends."""

import math

import pytest

from storage import Database, RunNotFound, SchemaOutOfDate, runs, stats
from storage.db import utcnow
from storage.migrate import head_revision


def test_migrations_upgrade_an_empty_database_to_head(db_url):
    db = Database(db_url)
    assert db.schema_status()[0] is None or db.is_sqlite
    before, after = db.upgrade()
    assert after == head_revision()
    assert db.schema_status() == (head_revision(), head_revision())
    db.upgrade()  # idempotent
    db.dispose()


def test_a_layers_statistics_are_found_by_layer_id_alone(db_url):
    # Deleting a run cascades from each of its layers by layer_id: without an index that
    # starts with it, every layer scanned the whole table (11 s for 50 layers among 2 M rows).
    from sqlalchemy import inspect

    db = Database(db_url)
    db.upgrade()
    inspector = inspect(db.engine)
    for table in ("layer_stats", "layer_stat_buckets"):
        leading = [index["column_names"][0] for index in inspector.get_indexes(table)]
        assert "layer_id" in leading, table
    db.dispose()


def test_downgrading_the_newest_migration_keeps_every_run_and_its_rows(db_url):
    # On SQLite a batch migration copies a table and drops the old one: with foreign keys on,
    # dropping runs took every run's scalars and layers with it.
    from alembic import command

    from storage.migrate import _config

    db = Database(db_url)
    db.upgrade()
    with db.session() as s:
        run_id = runs.ensure_run(s, uid="kept", project="p", name="kept", started_at=utcnow())
        runs.ensure_layers(s, run_id, [{"name": "fc", "position": 0}])
        stats.write_scalars(s, run_id, [{"step": 0, "key": "loss", "value": 1.0, "wall_time": 0}])
    with db.engine.begin() as conn:
        command.downgrade(_config(conn), "-1")
    with db.engine.connect() as conn:
        counts = [
            conn.exec_driver_sql(f"select count(*) from {table}").scalar()
            for table in ("runs", "layers", "scalars")
        ]
    assert counts == [1, 1, 1]
    db.upgrade()
    assert db.schema_status() == (head_revision(), head_revision())
    db.dispose()


def test_brand_new_sqlite_file_is_created_on_first_use(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'fresh.db'}")
    db.ensure_schema()
    assert db.schema_status()[0] == head_revision()


def _ensure_schema_when_told(url: str, go, results) -> None:
    go.wait(30)
    try:
        Database(url).ensure_schema()
        results.put(None)
    except Exception as exc:  # noqa: BLE001 - reported by the test
        results.put(repr(exc))


@pytest.mark.parametrize("file_exists", [False, True])
def test_processes_started_together_on_a_new_sqlite_file_all_get_the_schema(tmp_path, file_exists):
    # A sweep starts its trainers at once on the default file: each found no schema and ran the
    # migrations at the same time ("table projects already exists", or "no Tripwire schema" for
    # one that saw another's tables half made).
    import multiprocessing

    context = multiprocessing.get_context("fork")
    for round_ in range(3):
        path = tmp_path / f"sweep-{round_}.db"
        if file_exists:
            path.touch()
        go, results = context.Event(), context.Queue()
        processes = [
            context.Process(
                target=_ensure_schema_when_told, args=(f"sqlite:///{path}", go, results)
            )
            for _ in range(4)
        ]
        for p in processes:
            p.start()
        go.set()
        errors = [results.get(timeout=60) for _ in processes]
        for p in processes:
            p.join(30)
        assert errors == [None] * 4
        assert Database(f"sqlite:///{path}").schema_status()[0] == head_revision()


def test_postgres_without_schema_is_refused_with_the_fix_command(pg_url):
    db = Database(pg_url)
    with pytest.raises(SchemaOutOfDate, match="tripwire db upgrade --db"):
        db.ensure_schema()


def test_schema_newer_than_this_tripwire_is_refused(sqlite_url):
    db = Database(sqlite_url)
    db.upgrade()
    with db.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_future'")
    with pytest.raises(SchemaOutOfDate, match="newer than this Tripwire"):
        Database(sqlite_url).ensure_schema()


def test_a_backup_restored_over_a_migrated_database_is_one_clear_error(db_url):
    # pg_dump's alembic_version row lands beside the one the stack's migration wrote.
    from click.testing import CliRunner

    from tripwire.cli import cli

    db = Database(db_url)
    db.upgrade()
    with db.engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO alembic_version (version_num) VALUES ('0001')")
    for command in (["db", "status"], ["db", "upgrade"], ["runs"]):
        result = CliRunner().invoke(cli, [*command, "--db", db_url])
        assert result.exit_code == 1, result.output
        assert (
            "holds several revisions (" in result.output
            and "restore it into an empty" in result.output
        )
        assert "Traceback" not in result.output


def test_non_finite_values_round_trip(db):
    with db.session() as s:
        run_id = runs.ensure_run(s, uid="nf", project="p", name="nan-run", started_at=utcnow())
        ids = runs.ensure_layers(
            s, run_id, [{"name": "fc", "position": 0, "kind": "Linear", "shape": [2, 3]}]
        )
        values = [float("nan"), float("inf"), float("-inf"), None, 1.5, 1e308]
        stats.write_scalars(
            s,
            run_id,
            [
                {"step": i, "key": "loss", "value": v, "wall_time": 0.0}
                for i, v in enumerate(values)
            ],
        )
        stats.write_layer_stats(
            s,
            run_id,
            ids,
            [
                {
                    "layer": "fc",
                    "step": 0,
                    "grad_norm": float("nan"),
                    "sigma1": float("inf"),
                    "sa_hist": [0, 7, 1],
                }
            ],
        )
    got = [p.value for p in stats.scalar_series(db, run_id, ["loss"])]
    assert math.isnan(got[0]) and got[1] == math.inf and got[2] == -math.inf
    assert got[3] is None and got[4] == 1.5 and got[5] == 1e308
    (row,) = stats.layer_stats(db, run_id)
    assert math.isnan(row.grad_norm) and row.sigma1 == math.inf and row.sa_hist == [0, 7, 1]


def test_rewriting_a_row_is_ignored_not_duplicated(db):
    with db.session() as s:
        run_id = runs.ensure_run(s, uid="dup", project="p", name="r", started_at=utcnow())
        stats.write_scalars(s, run_id, [{"step": 1, "key": "loss", "value": 2.0, "wall_time": 0.0}])
    with db.session() as s:
        stats.write_scalars(s, run_id, [{"step": 1, "key": "loss", "value": 2.0, "wall_time": 0.0}])
    assert stats.count_rows(db, run_id) == (1, 0)


def test_hostile_run_names_are_stored_verbatim(db):
    names = ["'; DROP TABLE runs; --", 'quote " and \\ backslash', "ünïcødé ✓ 训练", "a" * 500]
    with db.session() as s:
        for i, name in enumerate(names):
            runs.ensure_run(s, uid=f"h{i}", project="p", name=name, started_at=utcnow())
    assert sorted(r.name for r in runs.list_runs(db)) == sorted(names)
    assert runs.find_run(db, names[0]).uid == "h0"


def test_find_run_prefers_uid_then_newest_name(db):
    with db.session() as s:
        runs.ensure_run(s, uid="u1", project="p", name="same", started_at=utcnow())
        runs.ensure_run(s, uid="u2", project="p", name="same", started_at=utcnow())
    assert runs.find_run(db, "same").uid == "u2"
    assert runs.find_run(db, "u1").uid == "u1"


def test_a_name_used_in_two_projects_needs_the_project(db):
    # Two teams on one database both call their run "baseline": taking the newest would
    # export, silence or delete the other team's run.
    with db.session() as s:
        runs.ensure_run(s, uid="a1", project="alpha", name="baseline", started_at=utcnow())
        runs.ensure_run(s, uid="b1", project="beta", name="baseline", started_at=utcnow())
    with pytest.raises(RunNotFound, match="used in projects alpha, beta"):
        runs.find_run(db, "baseline")
    assert runs.find_run(db, "baseline", "alpha").uid == "a1"
    assert runs.find_run(db, "baseline", "beta").uid == "b1"
    assert runs.find_run(db, "a1").uid == "a1"


def test_two_writers_creating_the_same_new_project_at_once_both_succeed(db):
    # Ranks of one job (per_rank=True) or runs started together create the project at the
    # same moment; the second must find the first's row, not fail on the unique name.
    import threading
    import time

    first_flushed, second_started = threading.Event(), threading.Event()
    errors = []

    def first():
        with db.session() as s:
            runs.ensure_run(s, uid="r0", project="new-project", name="rank0", started_at=utcnow())
            s.flush()
            first_flushed.set()
            second_started.wait(5)
            time.sleep(0.3)  # the second writer is now waiting on the unique name

    def second():
        first_flushed.wait(5)
        second_started.set()
        try:
            with db.session() as s:
                runs.ensure_run(
                    s, uid="r1", project="new-project", name="rank1", started_at=utcnow()
                )
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == []
    both = [runs.find_run(db, uid) for uid in ("r0", "r1")]
    assert {r.project for r in both} == {"new-project"}
