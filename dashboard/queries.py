"""Every read the pages make: thin wrappers over ``storage`` cached with a short TTL (and the SA
caption judged from a read, which costs as much as one).

Caches are keyed by the database URL (a string), so one process can serve several databases
(and tests can). Results are bounded by the storage queries themselves (see
:mod:`storage.series`); the TTL only spares the database when many browsers watch one run.

>>> from dashboard import queries
>>> queries.runs_overview("sqlite:///tripwire.db")            # doctest: +SKIP
[{'name': 'gpt-small', 'status': 'running', 'last_step': 420, ...}]
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime

import streamlit as st

from alerts.predictors.stalled import configured_after_s
from dashboard import insights
from storage import Database, redact_url, resolve_url, runs, series, stats
from storage import alerts as alert_store

LIVE_TTL_S = 3
"""Data of live runs changes every few seconds; pages refresh at about this pace."""
STATIC_TTL_S = 60
SERIES_TTL_S = 600
"""Series queries take a ``version`` (the run's last step and status) in their cache key, so a
finished run's page is computed once and a live run's whenever it has new steps."""


def db_url() -> str:
    """The dashboard's database: ``$TRIPWIRE_DB_URL`` (set by ``tripwire dashboard --db``)."""
    return resolve_url(None)


@st.cache_resource(show_spinner=False)
def database(url: str) -> Database:
    """One engine per URL for the life of the server; refuses an out-of-date schema."""
    db = Database(url)
    db.ensure_schema()
    return db


def now(url: str) -> datetime:
    """Naive UTC now by the database server's clock, which the trainers' times are on."""
    return database(url).now()


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def runs_overview(
    url: str,
    project: str | None = None,
    status: str | None = None,
    name_contains: str | None = None,
) -> list[dict]:
    return series.runs_overview(
        database(url),
        project=project,
        status=status,
        name_contains=name_contains,
        stalled_after_s=stalled_after_s(),
    )


@st.cache_data(ttl=STATIC_TTL_S, show_spinner=False)
def stalled_after_s() -> float:
    """When a silent running run shows as stalled: the ``stalled`` alert's ``after_s`` in the
    ``tripwire.toml`` in use (``$TRIPWIRE_CONFIG``; ``tripwire dashboard --config`` sets it)."""
    return configured_after_s()


@st.cache_data(ttl=STATIC_TTL_S, show_spinner=False)
def projects(url: str) -> list[str]:
    return runs.list_projects(database(url))


def _choice(r) -> dict:  # noqa: ANN001
    return {
        "id": r.id,
        "uid": r.uid,
        "name": r.name,
        "project": r.project,
        "status": r.status,
        "started_at": r.started_at,
    }


PICKER_LIMIT = 500
"""A run picker lists the newest this many runs that match its search box."""


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def run_choices(url: str, search: str | None = None, limit: int = PICKER_LIMIT) -> list[dict]:
    """(id, uid, name, project, status, started_at) of the newest runs whose name or project
    contains ``search`` (any case; every run without it), for pickers."""
    found = runs.list_runs(database(url), search=(search or "").strip() or None, limit=limit)
    return [_choice(r) for r in found]


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def runs_named(url: str, name: str) -> list[dict]:
    """Every run called exactly ``name`` (reruns, other projects' runs), newest first."""
    return [_choice(r) for r in runs.list_runs(database(url), name=name, limit=PICKER_LIMIT)]


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def runs_by_id(url: str, run_ids: tuple[int, ...]) -> dict[int, dict]:
    """id → the :func:`run_choices` dict of these runs, however old: for labelling their
    alerts and silences, which may belong to runs past the pickers' newest few hundred."""
    return {r.id: _choice(r) for r in runs.get_runs(database(url), list(run_ids))}


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def find_run(url: str, name_or_uid: str) -> dict | None:
    """The run with this uid or name as a plain dict, or None (also for a name used in several
    projects)."""
    try:
        return asdict(runs.find_run(database(url), name_or_uid))
    except Exception as exc:  # RunNotFound, AmbiguousRun; a bad URL surfaces elsewhere
        if type(exc).__name__ in ("RunNotFound", "AmbiguousRun"):
            return None
        raise


@st.cache_data(ttl=STATIC_TTL_S, show_spinner=False)
def layer_names(url: str, run_id: int) -> list[str]:
    return [layer.name for layer in runs.layers(database(url), run_id)]


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def step_bounds(url: str, run_id: int) -> tuple[int | None, int | None]:
    """(first, last) step with any data."""
    scalar_last, layer_last = stats.last_steps(database(url), run_id)
    last = max((s for s in (scalar_last, layer_last) if s is not None), default=None)
    return (0 if last is not None else None), last


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def scalar_keys(url: str, run_id: int) -> list[str]:
    """Every scalar name the run logged (``loss``, ``lr``, user scalars ...), sorted."""
    return stats.scalar_keys(database(url), run_id)


@st.cache_data(ttl=SERIES_TTL_S, show_spinner=False)
def scalars(
    url: str,
    run_id: int,
    keys: tuple[str, ...],
    start: int | None,
    end: int | None,
    version: tuple = (),
    max_points: int = 2000,
):
    return series.scalar_frame(
        database(url), run_id, list(keys), start=start, end=end, max_points=max_points
    )


@st.cache_data(ttl=SERIES_TTL_S, show_spinner=False)
def layer_grids(
    url: str,
    run_id: int,
    stats_: tuple[str, ...],
    start: int | None,
    end: int | None,
    version: tuple = (),
    max_steps: int = 400,
) -> dict:
    return series.layer_matrices(
        database(url),
        run_id,
        list(stats_),
        start=start,
        end=end,
        max_steps=max_steps,
        agg={"stable_rank": "min"},
    )


@st.cache_data(ttl=SERIES_TTL_S, show_spinner=False)
def sa_firsts(
    url: str,
    run_id: int,
    stats_: tuple[str, ...],
    start: int | None,
    end: int | None,
    version: tuple = (),
) -> tuple[list, list]:
    """The SA caption's (first collapses, first non-finite) of the grid :func:`layer_grids`
    returns for the same arguments. Cached beside it: replaying ``sa_collapse`` over 200 layers ×
    400 steps costs a good fraction of a second, which a click on another widget should not pay."""
    grid = layer_grids(url, run_id, stats_, start, end, version)["sa_imbalance"]
    return insights.first_collapses(grid), insights.first_nonfinite(grid)


@st.cache_data(ttl=SERIES_TTL_S, show_spinner=False)
def sa_hist(
    url: str, run_id: int, layer: str, start: int | None, end: int | None, version: tuple = ()
):
    return series.sa_hist_series(database(url), run_id, layer, start=start, end=end)


@st.cache_data(ttl=SERIES_TTL_S, show_spinner=False)
def layer_lines(
    url: str,
    run_id: int,
    layers: tuple[str, ...],
    stat: str,
    start: int | None,
    end: int | None,
    version: tuple = (),
):
    return series.layer_lines(database(url), run_id, list(layers), stat, start=start, end=end)


def refresh_seconds(last_step: int | None, every: int | None, n_layers: int) -> int:
    """How often a live run's page refreshes: every few seconds, slower for huge runs.

    Each refresh of a live run re-reads its layer statistics (their grid cannot be cached
    while it grows), so the pace follows the number of stored rows.

    >>> refresh_seconds(1000, 10, 48), refresh_seconds(100_000, 10, 200)
    (3, 60)
    """
    rows = ((last_step or 0) // max(every or 10, 1)) * max(n_layers, 1)
    if rows > 1_000_000:
        return 60
    if rows > 200_000:
        return 15
    return LIVE_TTL_S


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def alerts(
    url: str,
    run_id: int | None = None,
    states: tuple[str, ...] | None = None,
    severity: str | None = None,
    predictor: str | None = None,
    limit: int = 1000,
) -> list:
    return alert_store.list_alerts(
        database(url),
        run_id=run_id,
        states=states,
        severity=severity,
        predictor=predictor,
        limit=limit,
    )


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def silences(url: str) -> list:
    db = database(url)
    return alert_store.active_silences(db, db.now())


@st.cache_data(ttl=LIVE_TTL_S, show_spinner=False)
def health(url: str) -> dict:
    """What the health page shows: database, schema, scheduler tick, notifier failures."""
    out: dict = {"url": redact_url(url), "ok": False, "error": None}
    try:
        db = database(url)
        current, head = db.schema_status()
        out.update(ok=True, backend="sqlite" if db.is_sqlite else "postgresql")
        out.update(schema=current, head=head, runs=runs.count_runs(db))
        out["scheduler"] = alert_store.last_beat(db, "scheduler")
        out["failed"] = alert_store.list_notifications(db, status="failed", limit=50)
        out["recent"] = alert_store.list_notifications(db, limit=200)
    except Exception as exc:  # the page reports it; a dead database must not crash the page
        out["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return out


def silence(url: str, run_id: int, until, reason: str | None) -> None:
    """Silence a run's notifications (a write: never cached)."""
    alert_store.silence_run(
        database(url), run_id, until=until, reason=reason or None, created_by="dashboard"
    )
    silences.clear()


def unsilence(url: str, run_id: int) -> int:
    removed = alert_store.unsilence_run(database(url), run_id)
    silences.clear()
    return removed


def delete_run(url: str, run_id: int) -> int:
    """Delete a run and everything stored for it (a write: never cached) and drop the cached
    lists that may name it (not the series, keyed by run id: nothing reads a deleted run's).
    Returns how many runs were deleted (0 or 1)."""
    deleted = runs.delete_runs(database(url), [run_id])
    lists = (runs_overview, projects, run_choices, runs_named, runs_by_id, find_run, alerts)
    for cached in (*lists, silences, health):
        cached.clear()
    return deleted
