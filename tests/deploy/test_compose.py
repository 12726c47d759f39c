"""docker-compose.yml and the server image, without a Docker engine.

The file is parsed and checked (services, dependencies, health checks, environment, what is
published where), then the same commands run natively against the local PostgreSQL with the
environment compose would give them: the migration, the scheduler and the dashboard with its
health check.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from storage import Database
from storage import alerts as alert_store
from tests.pgserver import free_port

ROOT = Path(__file__).resolve().parents[2]
TRIPWIRE = str(Path(sys.executable).parent / "tripwire")
TRIPWIRE_SERVICES = ("migrate", "scheduler", "dashboard")
_VAR = re.compile(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def env_example(*, commented: bool = False) -> dict[str, str]:
    """The variables ``.env.example`` sets (with ``commented``, also the ones it documents)."""
    found = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        line = line.strip()
        if commented:
            line = line.lstrip("# ").strip()
        match = re.fullmatch(r"([A-Z][A-Z0-9_]+)=(\S*)", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}``."""

    def one(match: re.Match) -> str:
        name, op, arg = match.groups()
        given = env.get(name, "")
        if op == ":?" and not given:
            raise ValueError(f"{name}: {arg}")
        return given or (arg if op == ":-" else "")

    return _VAR.sub(one, value)


def service_env(compose: dict, service: str, env: dict[str, str]) -> dict[str, str]:
    return {
        k: interpolate(str(v), env) for k, v in compose["services"][service]["environment"].items()
    }


def test_services_dependencies_and_health_checks(compose):
    services = compose["services"]
    assert set(services) == {"postgres", "migrate", "scheduler", "dashboard", "mailpit"}
    pg = services["postgres"]
    assert pg["volumes"] == ["pgdata:/var/lib/postgresql/data"] and "pgdata" in compose["volumes"]
    # over TCP, as the services connect: the first start's server listens on its socket only
    assert "pg_isready -h 127.0.0.1" in " ".join(pg["healthcheck"]["test"])
    assert services["migrate"]["command"] == ["tripwire", "db", "upgrade", "--wait", "60"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("scheduler", "dashboard"):
        assert services[name]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"}
        }
        assert services[name]["restart"] == "unless-stopped" and services[name]["init"] is True
    assert services["scheduler"]["command"] == ["tripwire", "scheduler"]
    assert services["dashboard"]["command"][:2] == ["tripwire", "dashboard"]
    assert "_stcore/health" in " ".join(services["dashboard"]["healthcheck"]["test"])
    assert services["scheduler"]["healthcheck"]["test"] == ["CMD", "tripwire", "health"]
    assert services["mailpit"]["profiles"] == ["email"]
    assert all("profiles" not in s for n, s in services.items() if n != "mailpit")


def test_published_ports_are_loopback_unless_told(compose):
    env = env_example()
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            bound = interpolate(port, {}).split(":")[0]
            assert bound == "127.0.0.1", f"{name} publishes {port} beyond loopback by default"
            assert interpolate(port, env).startswith("127.0.0.1:"), f".env.example opens {name}"


def test_configuration_comes_from_env_and_every_variable_is_documented(compose):
    text = (ROOT / "docker-compose.yml").read_text()
    documented = env_example(commented=True)
    used = {m.group(1) for m in _VAR.finditer(text)} - {"TRIPWIRE_IMAGE"}
    assert used - set(documented) == set(), "variables missing from .env.example"
    for name in TRIPWIRE_SERVICES:
        env = compose["services"][name]["environment"]
        # The secrets are references to .env, never values in the file.
        for key in ("TRIPWIRE_SLACK_WEBHOOK_URL", "TRIPWIRE_SMTP_PASSWORD", "TRIPWIRE_WEBHOOK_URL"):
            assert env[key] == f"${{{key}:-}}"
        resolved = service_env(compose, name, {"POSTGRES_PASSWORD": "pw"})
        assert resolved["TRIPWIRE_DB_URL"] == (
            "postgresql+psycopg://tripwire:pw@postgres:5432/tripwire"
        )
        with pytest.raises(ValueError, match="POSTGRES_PASSWORD"):
            service_env(compose, name, {})  # no password, no stack


def test_the_env_file_with_the_secrets_is_neither_committed_nor_built_into_the_image():
    # `cp .env.example .env` puts POSTGRES_PASSWORD and the notifier secrets into the checkout,
    # where `git add -A` or `docker compose build` would otherwise take them along.
    def git_ignores(path: str) -> bool:
        found = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=ROOT)
        assert found.returncode in (0, 1), "git check-ignore failed"
        return found.returncode == 0

    assert git_ignores(".env"), ".env is not in .gitignore"
    assert not git_ignores(".env.example")  # the template stays in the repository
    assert ".env" in (ROOT / ".dockerignore").read_text().split()


def test_the_server_image_needs_no_torch():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from server_requirements import server_requirements
    finally:
        sys.path.pop(0)
    names = [
        re.split(r"[\[<>=]", r)[0].lower() for r in server_requirements(ROOT / "pyproject.toml")
    ]
    assert "torch" not in names
    assert {"psycopg", "apscheduler", "streamlit", "sqlalchemy", "alembic"} <= set(names)
    # ...which holds only while the server commands import torch lazily, if at all.
    probe = (
        "import sys, tripwire.cli, alerts.service, alerts.scheduler, dashboard.server, "
        "dashboard.queries, dashboard.figures, dashboard.auth; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
    dockerfile = (ROOT / "Dockerfile").read_text()
    for package in ("tripwire", "collector", "storage", "alerts", "dashboard"):
        assert f"COPY {package} ./{package}" in dockerfile
    assert "pip install --no-deps ." in dockerfile


def _native_env(compose: dict, service: str, db_url: str) -> dict[str, str]:
    """What compose gives the service, from .env.example, with the database swapped for ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIPWIRE_")}
    env.update(service_env(compose, service, {**env_example(), "POSTGRES_PASSWORD": "pw"}))
    env["TRIPWIRE_DB_URL"] = db_url
    return env


@pytest.mark.slow
def test_the_stack_commands_run_natively_against_postgresql(compose, pg_url, tmp_path):
    services = compose["services"]

    def run(service: str, **kw) -> subprocess.CompletedProcess:
        command = [TRIPWIRE, *services[service]["command"][1:]]
        env = _native_env(compose, service, pg_url)
        return subprocess.run(
            command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120, **kw
        )

    first = run("migrate")
    assert first.returncode == 0, first.stderr
    assert "schema upgraded" in first.stdout
    again = run("migrate")  # the one-shot runs on every `docker compose up`
    assert again.returncode == 0 and "already at" in again.stdout

    scheduler = subprocess.Popen(
        [TRIPWIRE, *services["scheduler"]["command"][1:]],
        env=_native_env(compose, "scheduler", pg_url),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    db = Database(pg_url)
    try:
        deadline = time.monotonic() + 60
        while alert_store.last_beat(db, "scheduler") is None and time.monotonic() < deadline:
            assert scheduler.poll() is None, scheduler.stdout.read()
            time.sleep(0.3)
        assert alert_store.last_beat(db, "scheduler") is not None, "the scheduler never ticked"
        check = services["scheduler"]["healthcheck"]["test"]
        healthy = subprocess.run(
            [TRIPWIRE, *check[2:]],
            env=_native_env(compose, "scheduler", pg_url),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert healthy.returncode == 0 and "scheduler: last tick" in healthy.stdout, healthy
    finally:
        scheduler.terminate()  # what `docker compose stop` sends (through init)
        out, _ = scheduler.communicate(timeout=30)
        db.dispose()
    assert "tripwire scheduler: stopped" in out  # SIGTERM stops it like Ctrl-C

    port = free_port()
    command = [TRIPWIRE, *services["dashboard"]["command"][1:]]
    command[command.index("--port") + 1] = str(port)
    dashboard = subprocess.Popen(
        command,
        env=_native_env(compose, "dashboard", pg_url),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        check = [c.replace("8501", str(port)) for c in services["dashboard"]["healthcheck"]["test"]]
        assert check[0] == "CMD"
        deadline = time.monotonic() + 120
        healthy = False
        while not healthy and time.monotonic() < deadline:
            assert dashboard.poll() is None, dashboard.stdout.read()
            healthy = (
                subprocess.run([sys.executable, *check[2:]], capture_output=True).returncode == 0
            )
            time.sleep(0.5)
        assert healthy, "the dashboard health check never passed"
    finally:
        dashboard.terminate()
        out, _ = dashboard.communicate(timeout=30)
    assert (
        "bound beyond localhost" in out
    )  # the container binds 0.0.0.0; the port mapping guards it


def test_the_retention_command_in_the_deployment_guide_runs_in_the_scheduler_service(
    compose, pg_url, tmp_path
):
    guide = (ROOT / "docs" / "deployment.md").read_text()
    line = re.search(r"^docker compose exec (\w+) tripwire (runs delete .*)$", guide, re.M)
    service, args = line.group(1), line.group(2).split()
    assert service in compose["services"]
    env = _native_env(compose, service, pg_url)
    db = Database(pg_url)
    db.upgrade()  # what the migrate service does first
    db.dispose()
    done = subprocess.run(
        [TRIPWIRE, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip() == "no runs to delete", done.stderr


def test_the_migration_waits_for_a_database_that_is_still_starting(compose, throwaway_pg):
    """On a first start PostgreSQL may pass its health check before it takes TCP connections:
    the one-shot migration waits for it instead of failing the stack."""
    command = [TRIPWIRE, *compose["services"]["migrate"]["command"][1:]]
    env = {**os.environ, "TRIPWIRE_DB_URL": throwaway_pg.url}
    migrate = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert "waiting for the database" in migrate.stderr.readline()  # nothing listens yet
        throwaway_pg.start()
        out, err = migrate.communicate(timeout=90)
    finally:
        migrate.kill()
    assert migrate.returncode == 0, err
    assert "schema upgraded" in out
