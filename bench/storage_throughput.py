"""Storage at scale: writer throughput, database size, and the scheduler's tick with live runs.

- ``writer``: rows per second the collector's :class:`storage.writer.BatchWriter` sustains
  into SQLite and PostgreSQL: checks of a 100-layer model (each a list of 100 layer rows with
  the full statistics and histogram, and 40 scalar rows for its 10 steps) are queued as fast as
  they come and timed until the writer has flushed them;
- ``size``: the database's growth per 1 000 checks of a 100-layer model (layer statistics plus
  the scalars of the 10 000 steps between them), SQLite file and PostgreSQL relations;
- ``scheduler``: ``alerts.service.AlertService(db).tick()`` with 100 live runs (17 layers each):
  the first tick, which catches up on 20 stored checks per run, and steady ticks after every run
  wrote one more check.

    .venv/bin/python -m bench.storage_throughput
    .venv/bin/python -m bench.storage_throughput --pg postgresql+psycopg://root@127.0.0.1:5432/postgres
    .venv/bin/python -m bench.storage_throughput --checks 50 --runs 5 --no-pg --no-write
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from bench.common import emit, fmt_ms, machine, median, table
from storage.entities import LAYER_STATISTICS

PG_SERVER = "postgresql+psycopg://root@127.0.0.1:5432/postgres"
BENCH_DB = "tripwire_bench"
BINS = 40


def layer_names(n: int) -> list[str]:
    kinds = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
    return [f"blocks.{i // 4}.{kinds[i % 4]}" for i in range(n)]


def check_records(step: int, layers: list[str], every: int, rng: random.Random) -> list:
    """The writer records of one check as the collector makes them: scalars and layer rows."""
    wall = time.time()
    scalars = [
        {"step": s, "key": key, "value": rng.random(), "wall_time": wall}
        for s in range(step - every + 1, step + 1)
        for key in ("loss", "lr", "grad_norm", "weight_norm")
    ]
    rows = []
    for name in layers:
        row = {key: rng.random() for key in LAYER_STATISTICS}
        hist = [0] * BINS
        for _ in range(16):
            hist[rng.randrange(BINS)] += 64
        row.update(layer=name, step=step, wall_time=wall, sa_hist=hist)
        rows.append(row)
    return [("scalars", scalars), ("layer_stats", rows)]


def start_record(uid: str, layers: list[str], every: int) -> tuple:
    return (
        "start",
        {
            "run": {
                "uid": uid,
                "project": "bench",
                "name": f"bench-{uid[:8]}",
                "started_at": time.time(),
                "config": {},
                "tags": [],
                "host": "bench",
                "pid": 0,
                "every": every,
                "sa_bin_edges": [-1 + 2 * i / BINS for i in range(BINS + 1)],
            },
            "layers": [
                {"name": n, "position": i, "kind": "Linear", "shape": [512, 512]}
                for i, n in enumerate(layers)
            ],
        },
    )


@contextmanager
def pg_schema(server_url: str):
    """A URL whose connections use a fresh schema of the ``tripwire_bench`` database; the
    database is dropped afterwards if this call created it (and nothing else uses it by then)."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import DBAPIError

    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        created = not conn.scalar(
            text("select 1 from pg_database where datname = :n"), {"n": BENCH_DB}
        )
        if created:
            conn.execute(text(f'create database "{BENCH_DB}"'))
    base = server_url.rsplit("/", 1)[0] + f"/{BENCH_DB}"
    schema = f"b_{uuid.uuid4().hex[:10]}"
    bench = create_engine(base, isolation_level="AUTOCOMMIT")
    with bench.connect() as conn:
        conn.execute(text(f'create schema "{schema}"'))
    try:
        yield f"{base}?options=-csearch_path%3D{schema}", schema
    finally:
        with bench.connect() as conn:
            conn.execute(text(f'drop schema "{schema}" cascade'))
        bench.dispose()
        if created:
            try:
                with admin.connect() as conn:
                    conn.execute(text(f'drop database "{BENCH_DB}"'))
            except DBAPIError as exc:  # another benchmark is using it: it stays for that one
                print(f"kept database {BENCH_DB}: {exc.orig}", file=sys.stderr)
        admin.dispose()


def open_db(url: str):
    from storage import Database

    db = Database(url)
    if not db.is_sqlite:
        db.upgrade()
    db.ensure_schema()
    return db


def writer_throughput(url: str, layers: int, checks: int, every: int, spool: Path) -> dict:
    """Rows per second of one BatchWriter, from the first record queued to the last written."""
    from storage.writer import BatchWriter

    db = open_db(url)
    names = layer_names(layers)
    uid = uuid.uuid4().hex
    writer = BatchWriter(db, uid, spool_dir=spool)
    rng = random.Random(0)
    writer.put(*start_record(uid, names, every))
    writer.flush()
    records = [r for c in range(checks) for r in check_records((c + 1) * every, names, every, rng)]
    rows = sum(len(payload) for _, payload in records)
    cpu0 = _thread_cpu_s(writer._thread.native_id)
    t0 = time.perf_counter()
    put_t0 = time.thread_time()
    for kind, payload in records:
        writer.put(kind, payload)
    put_s = time.thread_time() - put_t0
    done = writer.flush(timeout=600)
    elapsed = time.perf_counter() - t0
    cpu = _thread_cpu_s(writer._thread.native_id) - cpu0
    writer.close()
    db.dispose()
    return {
        "rows": rows,
        "seconds": elapsed,
        "rows_per_s": rows / elapsed,
        "checks_per_s": checks / elapsed,
        "put_us_per_check": put_s / checks * 1e6,
        "writer_cpu_us_per_row": cpu / rows * 1e6,
        "complete": done and writer.rows_written == rows and not writer.spooled,
    }


def _thread_cpu_s(native_id: int) -> float:
    """CPU seconds a thread of this process has used (the writer's own cost, server excluded)."""
    import psutil

    for t in psutil.Process().threads():
        if t.id == native_id:
            return t.user_time + t.system_time
    return 0.0


def size_per_checks(url: str, layers: int, checks: int, every: int, spool: Path) -> float:
    """Bytes the database grows by per ``checks`` checks of a ``layers``-layer model."""
    from sqlalchemy import text

    from storage.writer import BatchWriter

    db = open_db(url)

    def size() -> int:
        with db.engine.connect() as conn:
            if db.is_sqlite:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
                free = conn.exec_driver_sql("PRAGMA freelist_count").scalar()
                return (pages - free) * conn.exec_driver_sql("PRAGMA page_size").scalar()
            return conn.scalar(
                text(
                    "select sum(pg_total_relation_size(c.oid)) from pg_class c "
                    "join pg_namespace n on n.oid = c.relnamespace "
                    "where n.nspname = current_schema() and c.relkind in ('r', 't', 'm')"
                )
            )

    names = layer_names(layers)
    uid = uuid.uuid4().hex
    writer = BatchWriter(db, uid, spool_dir=spool)
    writer.put(*start_record(uid, names, every))
    writer.flush()
    before = size()
    rng = random.Random(1)
    for c in range(checks):
        for kind, payload in check_records((c + 1) * every, names, every, rng):
            writer.put(kind, payload)
    writer.flush(timeout=600)
    grown = size() - before
    writer.put("finish", {"status": "finished", "at": time.time(), "error": None})
    writer.close()  # an ended run: what copy_time copies
    db.dispose()
    return grown * 1000 / checks


def copy_time(source_url: str, target_url: str) -> dict:
    """Seconds ``tripwire runs copy`` takes to bring the one run of ``source_url`` (written by
    :func:`size_per_checks`) into an empty database."""
    from storage import runs
    from storage.copy import copy_run

    source, target = open_db(source_url), open_db(target_url)
    (run,) = runs.list_runs(source)
    t0 = time.perf_counter()
    copied = copy_run(source, target, run)
    seconds = time.perf_counter() - t0
    source.dispose()
    target.dispose()
    return {"seconds": seconds, "rows": copied.scalars + copied.layer_rows}


def scheduler_ticks(url: str, n_runs: int, layers: int, checks: int, ticks: int) -> dict:
    """Seconds per ``AlertService.tick()`` with ``n_runs`` live runs."""
    from alerts.service import AlertService
    from storage import runs, stats
    from storage.db import utcnow

    db = open_db(url)
    names = layer_names(layers)
    rng = random.Random(2)
    every = 10
    run_ids = {}
    with db.session() as s:
        for r in range(n_runs):
            uid = uuid.uuid4().hex
            spec = dict(start_record(uid, names, every)[1]["run"])
            spec["started_at"] = utcnow()
            run_ids[r] = run_id = runs.ensure_run(s, **spec)
            runs.ensure_layers(s, run_id, start_record(uid, names, every)[1]["layers"])
    layer_ids = {}
    with db.session() as s:
        for run_id in run_ids.values():
            layer_ids[run_id] = runs.ensure_layers(s, run_id, [])

    def write_check(c: int) -> None:
        step = c * every
        with db.session() as s:
            for run_id in run_ids.values():
                for kind, payload in check_records(step, names, every, rng):
                    if kind == "scalars":
                        stats.write_scalars(s, run_id, [p for p in payload if p["step"] >= 0])
                    else:
                        stats.write_layer_stats(s, run_id, layer_ids[run_id], payload)
                runs.touch(s, run_id, last_step=step, at=utcnow())

    for c in range(checks):
        write_check(c)
    service = AlertService(db)
    t0 = time.perf_counter()
    service.tick()
    first = time.perf_counter() - t0
    steady = []
    for i in range(ticks):
        write_check(checks + i)
        t0 = time.perf_counter()
        service.tick()
        steady.append(time.perf_counter() - t0)
    db.dispose()
    return {"first_s": first, "steady_s": median(steady), "steady_max_s": max(steady)}


def report(results: dict, args) -> str:
    rows = []
    for backend, r in results.items():
        w, t = r["writer"], r.get("scheduler")
        rows.append(
            [
                backend,
                f"{w['rows_per_s']:,.0f}",
                f"{w['checks_per_s']:.1f}",
                f"{w['put_us_per_check']:.0f}",
                f"{w['writer_cpu_us_per_row']:.1f}",
                "yes" if w["complete"] else "NO",
                f"{r['size'] / 2**20:.1f}",
                f"{r['copy']['seconds']:.1f} ({r['copy']['rows'] / r['copy']['seconds']:,.0f} rows/s)",
                "" if t is None else f"{t['first_s']:.2f}",
                "" if t is None else f"{fmt_ms(t['steady_s'])} (max {fmt_ms(t['steady_max_s'])})",
            ]
        )
    return (
        f"Measured on {machine()}. Command: `python -m bench.storage_throughput`. "
        f"*Writer*: one `BatchWriter` given {args.checks} checks of a {args.layers}-layer model "
        f"({args.layers} layer rows with all statistics and a {BINS}-bin histogram, plus 40 "
        "scalar rows, per check) as fast as `put()` takes them; rows per second from the first "
        "record queued to the last one committed; *put* is the training thread's cost of "
        "queueing one check; *writer thread CPU* is the client's own work per row (the "
        "database server's work excluded). *Size*: growth per 1 000 checks of a "
        f"{args.layers}-layer model at every=10 (layer rows and the 10 000 steps' scalars, "
        "indexes included). *Copy*: `tripwire runs copy` of that run into an empty database "
        "of the same kind. *Scheduler*: `AlertService(db).tick()` with "
        f"{args.runs} live runs of 17 layers, first tick catching up on {args.tick_checks} "
        f"checks per run, then the median of {args.ticks} ticks each after every run wrote one "
        "more check.\n\n"
        + table(
            [
                "database",
                "writer rows/s",
                "checks/s",
                "put µs/check",
                "writer thread CPU µs/row",
                "all rows written",
                "MiB per 1 000 checks",
                f"copy of those {args.size_checks} checks, s",
                "scheduler first tick s",
                "scheduler tick ms",
            ],
            rows,
        )
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=100)
    parser.add_argument("--checks", type=int, default=300, help="checks for the writer test")
    parser.add_argument("--size-checks", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--tick-checks", type=int, default=20)
    parser.add_argument("--ticks", type=int, default=5)
    parser.add_argument("--pg", default=PG_SERVER, help="a PostgreSQL server URL (any database)")
    parser.add_argument("--no-pg", action="store_true")
    parser.add_argument("--no-scheduler", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="tripwire-storage-") as tmp_name:
        tmp = Path(tmp_name)
        backends = [("SQLite (WAL)", None)] + ([] if args.no_pg else [("PostgreSQL", args.pg)])
        for label, server in backends:
            with _url(server, tmp) as make_url:
                t0 = time.perf_counter()
                size_url = make_url("s")
                r = {
                    "writer": writer_throughput(make_url("w"), args.layers, args.checks, 10, tmp),
                    "size": size_per_checks(size_url, args.layers, args.size_checks, 10, tmp),
                    "copy": copy_time(size_url, make_url("c")),
                }
                if not args.no_scheduler:
                    r["scheduler"] = scheduler_ticks(
                        make_url("t"), args.runs, 17, args.tick_checks, args.ticks
                    )
                results[label] = r
                print(f"[{label}: {time.perf_counter() - t0:.0f} s]")
    emit("Storage throughput", report(results, args), write=not args.no_write)
    return results


@contextmanager
def _url(server: str | None, tmp: Path):
    """A factory of fresh database URLs: SQLite files, or PostgreSQL schemas."""
    if server is None:
        yield lambda tag: f"sqlite:///{tmp / f'{tag}-{uuid.uuid4().hex[:6]}.db'}"
        return
    stack = []

    def make(tag: str) -> str:
        ctx = pg_schema(server)
        url, _ = ctx.__enter__()
        stack.append(ctx)
        return url

    try:
        yield make
    finally:
        for ctx in reversed(stack):
            ctx.__exit__(None, None, None)


if __name__ == "__main__":
    main()
