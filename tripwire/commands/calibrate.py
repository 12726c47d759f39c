"""``tripwire calibrate``: learn a model's alert thresholds from healthy runs into tripwire.toml."""

from __future__ import annotations

import os
from pathlib import Path

import click

from tripwire.options import UserError, db_option


@click.command("calibrate")
@db_option
@click.option(
    "--runs",
    "run_names",
    required=True,
    metavar="A,B,...",
    help="Comma-separated names (or uids) of runs of this model that trained healthily.",
)
@click.option(
    "--config",
    "config_path",
    default=None,
    metavar="FILE",
    help="The file to update (created if absent; default: $TRIPWIRE_CONFIG, else "
    "./tripwire.toml); its other settings are kept.",
)
@click.option(
    "--margin",
    default=0.25,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Headroom over the highest level each signal held on the healthy runs.",
)
@click.option("--project", default=None, help="Look the runs up in this project only.")
@click.option("--dry-run", is_flag=True, help="Print the thresholds; write nothing.")
def calibrate_command(
    db_url: str | None,
    run_names: str,
    config_path: str | None,
    margin: float,
    project: str | None,
    dry_run: bool,
) -> None:
    """Learn per-model thresholds from runs you mark as healthy and write them to FILE.

    Each predictor's healthy runs are replayed; its threshold becomes the highest score that
    persisted on them (for the rule's for_checks evaluations) times 1 + MARGIN. Keep one file
    per model family (TRIPWIRE_CONFIG or --config selects it); runs of models never calibrated
    keep the conservative defaults. Comments in FILE are not kept. A run on which a critical
    alert fires (non_finite, loss_exploded) is refused; a predictor whose signal the runs did
    not log is left as it is.

    \b
        tripwire calibrate --runs gpt-small-a,gpt-small-b --config gpt-small.toml
    """
    try:
        import tomllib

        from alerts.calibrate import THRESHOLD_PARAMS, NotHealthy, apply, learn
        from alerts.config import ENV_CONFIG, ConfigError, load_config
        from alerts.toml_out import dumps
    except ImportError as exc:
        raise UserError(f"calibration needs the alerts extra ({exc.name} is missing)") from None
    from storage import Database, RunNotFound, runs

    path = Path(config_path or os.environ.get(ENV_CONFIG) or "tripwire.toml")
    try:
        config = load_config(path if path.exists() else None, search=False)
    except ConfigError as exc:
        raise UserError(str(exc)) from None
    db = Database(db_url, create=False)
    db.ensure_schema()
    names = [n.strip() for n in run_names.split(",") if n.strip()]
    if not names:
        raise UserError("--runs: give at least one run name")
    try:
        healthy = [runs.find_run(db, name, project) for name in names]
    except RunNotFound as exc:
        raise UserError(str(exc)) from None

    try:
        thresholds = learn(db, healthy, config, margin=margin, refuse_blowups=True)
    except NotHealthy as exc:
        raise UserError(str(exc)) from None
    for t in thresholds.values():
        change = f"{t.param} {t.default:g} -> {t.value:.4g}" if t.enabled else "disabled"
        click.echo(f"{t.predictor}: healthy max {t.healthy_max:.4g}; {change}")
    for name in sorted(set(config.enabled_rules()) & set(THRESHOLD_PARAMS) - set(thresholds)):
        click.echo(f"{name}: its signal is not in these runs; left as it is")
    if dry_run:
        return
    calibrated = apply(config, thresholds)
    doc = tomllib.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    doc.setdefault("predictors", {})
    for name, rule in calibrated.model_dump(exclude_unset=True).get("predictors", {}).items():
        doc["predictors"][name] = {**doc["predictors"].get(name, {}), **rule}
    path.write_text(
        f"# thresholds calibrated by `tripwire calibrate` on: {', '.join(names)}\n" + dumps(doc),
        encoding="utf-8",
    )
    click.echo(f"wrote {path}")


def register(cli: click.Group) -> None:
    cli.add_command(calibrate_command)
