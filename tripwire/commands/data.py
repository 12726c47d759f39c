"""Commands over stored data: ``tripwire db upgrade``, ``tripwire runs``, ``tripwire export``."""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime, timedelta

import click

from alerts.predictors.stalled import configured_after_s
from storage import Database, redact_url, runs, series
from storage.export import WHAT, export_frame
from tripwire import jsonout
from tripwire.options import UserError, db_option


@click.group("db")
def db_group() -> None:
    """Manage the database schema."""


@db_group.command("upgrade")
@db_option
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0, max=3600),
    default=0,
    metavar="SECONDS",
    help="Retry a database that does not answer yet for up to this long (a server starting).",
)
def db_upgrade(db_url: str | None, wait_s: float) -> None:
    """Create or upgrade the schema to this version of Tripwire (Alembic migrations)."""
    from storage import StoreUnavailable

    db = Database(db_url)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            before, after = db.upgrade()
            break
        except StoreUnavailable as exc:
            if time.monotonic() >= deadline:
                raise
            click.echo(f"waiting for the database: {exc}", err=True)
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
    target = redact_url(db.url)
    if before == after:
        click.echo(f"{target}: schema already at {after}")
    else:
        click.echo(f"{target}: schema upgraded {before or '(empty)'} -> {after}")


@db_group.command("status")
@db_option
def db_status(db_url: str | None) -> None:
    """Show the schema revision of the database and the one this Tripwire needs.

    Exits 1 unless they are the same, so a script can check before it starts anything.
    """
    from storage import migrate

    db = Database(db_url, create=False)
    current, head = db.schema_status()
    if current == head:
        state = "up to date"
    elif current is not None and not migrate.is_known(current):
        state = "newer than this Tripwire: upgrade Tripwire (pip install -U tripwire)"
    else:
        state = "needs `tripwire db upgrade`"
    click.echo(f"{redact_url(db.url)}: schema {current or '(none)'}, head {head}: {state}")
    if current != head:
        sys.exit(1)


def printable(text: str) -> str:
    """``text`` for one line of a terminal table: control characters (a newline in a run name)
    escaped, as Python writes them.

    >>> print(printable("lr\\n3e-3"))
    lr\\n3e-3
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _named_runs(db: Database, names: tuple[str, ...], project: str | None) -> list:
    """The runs the command names (ids or names, the newest run of a name), each once, in the
    order named; a name no run has raises RunNotFound."""
    return list({run.id: run for run in (runs.find_run(db, n, project) for n in names)}.values())


def _display_status(run, now: datetime, stalled_after_s: float) -> str:
    return "stalled" if run.is_stalled(now, stalled_after_s) else run.status


@click.group("runs", invoke_without_command=True)
@db_option
@click.option("--project", default=None, help="Only runs of this project.")
@click.option(
    "--status",
    type=click.Choice(["running", "stalled", "finished", "failed"]),
    default=None,
    help="Only runs in this state.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="The newest this many runs (0: all).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.pass_context
def runs_command(
    ctx: click.Context,
    db_url: str | None,
    project: str | None,
    status: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List runs, newest first: status (running, finished, failed, stalled), last step and loss.

    `tripwire runs delete` deletes runs; `tripwire runs copy` copies them into another database;
    `tripwire runs end` marks stalled runs ended.
    """
    if ctx.invoked_subcommand is not None:
        return
    db = Database(db_url, create=False)
    db.ensure_schema()
    now = db.now()
    found = series.runs_overview(
        db,
        project=project,
        status=status,
        now=now,
        stalled_after_s=configured_after_s(),
        limit=limit + 1 if limit else 10**9,
    )
    more = bool(limit) and len(found) > limit
    items = [
        {
            "name": r["name"],
            "id": r["uid"],
            "project": r["project"],
            "status": r["status"],
            "last_step": r["last_step"],
            "last_loss": r["last_loss"],
            "started_at": r["started_at"].isoformat(timespec="seconds") + "Z",
            "host": r["host"],
        }
        for r in (found[:limit] if limit else found)
    ]
    note = f"the newest {limit} runs shown; --limit 0 lists them all" if more else None
    if as_json:
        click.echo(jsonout.dumps(items, indent=2))
        if note:
            click.echo(note, err=True)
        return
    if not items:
        which = " ".join(f"{k} {v!r}" for k, v in (("project", project), ("status", status)) if v)
        click.echo(f"no runs{' with ' + which if which else ''} in {redact_url(db.url)}")
        return
    header = f"{'NAME':<32} {'PROJECT':<14} {'STATUS':<9} {'STEP':>7} {'LOSS':>9}  STARTED (UTC)"
    click.echo(header)
    for item in items:
        loss = "" if item["last_loss"] is None else f"{item['last_loss']:.4g}"
        step = "" if item["last_step"] is None else str(item["last_step"])
        name, project = printable(item["name"]), printable(item["project"])
        name = name if len(name) <= 32 else name[:31] + "…"
        click.echo(
            f"{name:<32} {project[:14]:<14} {item['status']:<9} {step:>7} {loss:>9}  {item['started_at'][:19]}"
        )
    if note:
        click.echo(f"({note})")


@runs_command.command("delete")
@db_option
@click.argument("names", nargs=-1, metavar="[RUN]...")
@click.option("--project", default=None, help="Only runs of this project.")
@click.option(
    "--older-than",
    "older_than_days",
    type=click.FloatRange(min=0),
    default=None,
    metavar="DAYS",
    help="Every run that last reported more than DAYS days ago (instead of naming runs).",
)
@click.option("--yes", "-y", is_flag=True, help="Delete without asking.")
def delete_command(
    db_url: str | None,
    names: tuple[str, ...],
    project: str | None,
    older_than_days: float | None,
    yes: bool,
) -> None:
    """Delete runs and everything stored for them: statistics, scalars, alerts, notifications.

    RUN is a run id or name (the newest run with that name). A run that is still reporting
    is refused: stop its trainer first (a killed one shows as stalled after 5 minutes, or the
    stalled rule's `after_s` in tripwire.toml).

    \b
      tripwire runs delete demo-20261130-105525
      tripwire runs delete --older-than 30 --project scratch --yes
    """
    if bool(names) == (older_than_days is not None):
        raise UserError("name the runs to delete, or give --older-than DAYS (not both)")
    db = Database(db_url, create=False)
    db.ensure_schema()
    now = db.now()
    after_s = configured_after_s()
    if names:
        chosen = _named_runs(db, names, project)
    else:
        cutoff = now - timedelta(days=older_than_days)
        found = runs.list_runs(db, project=project, limit=1_000_000)
        chosen = [  # a run still reporting is never old, however old its last heartbeat read
            r
            for r in found
            if r.last_seen < cutoff and _display_status(r, now, after_s) != "running"
        ]
    live = [r.name for r in chosen if _display_status(r, now, after_s) == "running"]
    if live:
        raise UserError(f"still reporting, not deleted: {', '.join(live)} (stop the trainer first)")
    if not chosen:
        click.echo("no runs to delete")
        return
    for run in chosen:
        step = "no steps" if run.last_step is None else f"step {run.last_step}"
        status = _display_status(run, now, after_s)
        click.echo(f"  {printable(run.name)}  ({printable(run.project)}, {status}, {step})")
    if not yes:
        what = (
            "this run and its data"
            if len(chosen) == 1
            else f"these {len(chosen)} runs and their data"
        )
        click.confirm(f"Delete {what}?", abort=True)
    deleted = runs.delete_runs(db, [r.id for r in chosen])
    click.echo(f"deleted {deleted} run{'s' if deleted != 1 else ''} from {redact_url(db.url)}")


@runs_command.command("end")
@db_option
@click.argument("names", nargs=-1, required=True, metavar="RUN...")
@click.option("--project", default=None, help="Look the runs up in this project only.")
@click.option(
    "--status",
    type=click.Choice(["failed", "finished"]),
    default="failed",
    show_default=True,
    help="What the run is marked.",
)
def end_command(db_url: str | None, names: tuple[str, ...], project: str | None, status: str):
    """Mark stalled runs ended: their trainer died without closing them (SIGKILL, a lost node).

    RUN is a run id or name (the newest run with that name). The run is marked failed (or
    finished), its error says when it last reported, and at the scheduler's next tick its
    stalled alert resolves. A run that still reports is refused. If its trainer comes back
    after all, what it writes is still stored, and its own close() marks it again.

    \b
      tripwire runs end gpt-small-lr3e-3
    """
    db = Database(db_url, create=False)
    db.ensure_schema()
    now = db.now()
    after_s = configured_after_s()
    chosen = _named_runs(db, names, project)
    statuses = {r.id: _display_status(r, now, after_s) for r in chosen}
    not_stalled = [
        f"{printable(r.name)} ({statuses[r.id]})" for r in chosen if statuses[r.id] != "stalled"
    ]
    if not_stalled:
        raise UserError(f"not stalled, not ended: {', '.join(not_stalled)}")
    for run in chosen:
        seen = run.last_seen.isoformat(timespec="seconds")
        with db.session() as s:
            runs.finish(
                s,
                run.id,
                status=status,
                at=now,
                error=f"ended with `tripwire runs end`: the trainer last reported at {seen}Z",
            )
        click.echo(f"{printable(run.name)}: marked {status} (last reported at {seen}Z)")


@runs_command.command("copy")
@db_option
@click.argument("names", nargs=-1, required=True, metavar="RUN...")
@click.option(
    "--to",
    "target_url",
    required=True,
    metavar="URL",
    help="The database to copy into (a SQLite file is created if missing).",
)
@click.option("--project", default=None, help="Look the runs up in this project only.")
def copy_command(
    db_url: str | None, names: tuple[str, ...], target_url: str, project: str | None
) -> None:
    """Copy ended runs, with their statistics and alerts, into another database.

    RUN is a run id or name (the newest run with that name) in the database of --db (or
    TRIPWIRE_DB_URL). Each run is copied whole or not at all, with the same id, name, project
    and times; its alerts and silences come along, and its alerts are not sent again. A run
    still running, one the target already holds, and one whose stalled or no_progress alert
    the source's scheduler has not resolved yet are refused.

    \b
      tripwire runs copy gpt-small-lr3e-3 --db sqlite:///tripwire.db \\
          --to postgresql+psycopg://me@team-db:5432/tripwire
    """
    from alerts.predictors import LIVE_ONLY
    from storage import StorageError
    from storage.copy import copy_run

    source = Database(db_url, create=False)
    source.ensure_schema()
    target = Database(target_url)
    target.ensure_schema()
    chosen = _named_runs(source, names, project)
    failed = 0
    for run in chosen:
        try:
            copied = copy_run(source, target, run, live_only=LIVE_ONLY)
        except StorageError as exc:
            failed += 1
            click.echo(f"{printable(run.name)}: not copied: {exc}", err=True)
            continue
        click.echo(
            f"{printable(run.name)}: copied {copied.scalars} scalars, {copied.layer_rows} layer "
            f"rows and {copied.alerts} alerts to {redact_url(target.url)}"
        )
    if failed:
        raise UserError(f"{failed} of {len(chosen)} runs were not copied")


@click.command("export")
@db_option
@click.option(
    "--run", "run_name", required=True, help="Run name (the newest with that name) or run id."
)
@click.option("--what", type=click.Choice(WHAT), default="scalars", show_default=True)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "parquet", "json"]),
    default="csv",
    show_default=True,
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False),
    default=None,
    help="File to write (default: stdout).",
)
@click.option("--project", default=None, help="Look the run up in this project only.")
def export_command(db_url, run_name, what, fmt, output, project) -> None:
    """Write a run's scalars, layer statistics, alerts or metadata (``--what run``: config, tags,
    status, the SA bin edges, its layers), in the contract's column names."""
    if fmt == "parquet" and output is None:
        raise UserError("--format parquet needs --output FILE")
    folder = os.path.dirname(os.path.abspath(output)) if output is not None else None
    if folder is not None and not os.path.isdir(folder):
        raise UserError(f"--output: no directory {folder}")
    frame = export_frame(run_name, what, db=db_url, project=project)
    if fmt == "json":
        text = jsonout.dumps(frame.to_dict(orient="records"))
    else:
        frame = _flat(frame, fmt)
        if fmt == "parquet":
            try:
                frame.to_parquet(output, index=False)
            except ImportError as exc:
                raise UserError("parquet needs pyarrow: pip install 'tripwire[export]'") from exc
            return
        text = frame.to_csv(index=False)
    if output is None:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)


NESTED = ("tags", "config", "sa_bin_edges", "layers")
"""The ``run`` export's columns that hold lists or mappings."""


def _flat(frame, fmt: str):
    """``frame`` as CSV or Parquet can hold it: ``sa_hist`` as the counts (space-separated in
    CSV, a list in Parquet), a run's nested values as JSON text (CSV), its ``config`` and
    ``layers`` as JSON text in Parquet too (a mapping of any shape)."""
    if "sa_hist" in frame:
        if fmt == "csv":
            frame["sa_hist"] = frame["sa_hist"].map(
                lambda h: "" if h is None else " ".join(map(str, h))
            )
        else:
            frame["sa_hist"] = frame["sa_hist"].map(lambda h: None if h is None else list(h))
    text_columns = NESTED if fmt == "csv" else ("config", "layers")
    for name in text_columns:
        if name in frame:
            frame[name] = frame[name].map(
                lambda v: None if v is None else json.dumps(jsonout.json_value(v))
            )
    return frame


def register(cli: click.Group) -> None:
    cli.add_command(db_group)
    cli.add_command(runs_command)
    cli.add_command(export_command)
