"""``tripwire spool list|replay``: rows a trainer spooled locally and never got to write."""

from __future__ import annotations

import click

from storage import Database, redact_url
from storage.errors import StorageError
from storage.spool import rejected_files, replay, spooled_files
from storage.writer import DEFAULT_SPOOL_DIR
from tripwire.options import UserError, db_option

dir_option = click.option(
    "--dir",
    "spool_dir",
    default=str(DEFAULT_SPOOL_DIR),
    show_default="$TRIPWIRE_SPOOL_DIR or ~/.cache/tripwire/spool",
    type=click.Path(file_okay=False),
    help="Spool directory of the trainer (its spool_dir).",
)


@click.group("spool")
def spool_group() -> None:
    """Rows spooled on this machine while the database was down."""


@spool_group.command("list")
@dir_option
def spool_list(spool_dir: str) -> None:
    """List spool files: run id, records, rows, steps, lines that do not decode; and the files
    of records the database refused."""
    files = spooled_files(spool_dir)
    if not files:
        click.echo(f"no spooled rows in {spool_dir}")
    for f in files:
        steps = "" if f.first_step is None else f"  steps {f.first_step}–{f.last_step}"
        bad = f", {f.unreadable} unreadable lines" if f.unreadable else ""
        click.echo(f"{f.run_uid}  {f.records} records, {f.rows} rows{bad}{steps}  ({f.path})")
    for path, records in rejected_files(spool_dir):
        click.echo(f"{records} records the database refused, not replayed: {path}")


@spool_group.command("replay")
@db_option
@dir_option
def spool_replay(db_url: str | None, spool_dir: str) -> None:
    """Write every spool file into the database (in order, idempotently) and remove it.

    Lines that do not decode (a write cut short) are skipped and kept in <file>.bad.
    """
    db = Database(db_url)
    db.ensure_schema()
    files = spooled_files(spool_dir)
    if not files:
        click.echo(f"no spooled rows in {spool_dir}")
        return
    failed = 0
    for f in files:
        try:
            rows = replay(db, f)
        except StorageError as exc:
            failed += 1
            click.echo(f"{f.run_uid}: not wholly replayed: {exc}", err=True)
            continue
        click.echo(f"{f.run_uid}: {rows} rows written to {redact_url(db.url)}")
        if f.unreadable:
            click.echo(
                f"{f.run_uid}: {f.unreadable} unreadable lines skipped, kept in {f.bad_path}",
                err=True,
            )
    if failed:
        raise UserError(f"{failed} of {len(files)} spool files were not wholly replayed")


def register(cli: click.Group) -> None:
    cli.add_command(spool_group)
