"""Bad input gets a clear error or a faithful record, and never crashes training.

Odd models and non-finite values go through a real training loop; hostile run names through
both databases; broken configuration files and a database from the future through the
``tripwire`` command line, which must answer with one ``error:`` line and exit status 1.
"""

from __future__ import annotations

import math

import pytest
import torch
from click.testing import CliRunner
from sqlalchemy import text
from torch import nn

import collector
from storage import Database, SchemaOutOfDate, runs, stats
from tripwire.cli import cli

pytestmark = pytest.mark.usefixtures("one_thread")


def _watch(model, db_url, tmp_path, **kw):
    return collector.watch(model, db=db_url, spool_dir=tmp_path / "spool", sample_size=32, **kw)


def test_nan_and_inf_everywhere_are_recorded_as_they_are(sqlite_url, tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
        model[1].weight[0, 0] = float("inf")
    monitor = _watch(model, sqlite_url, tmp_path, run="nan-inf", every=1)
    for step in range(3):
        loss = model(torch.randn(3, 4)).sum()
        loss.backward()
        monitor.log(step, loss=loss, lr=float("inf"), floor=float("-inf"), huge=1e300)
    monitor.close()
    assert monitor.errors == 0
    db = Database(sqlite_url)
    run = runs.find_run(db, "nan-inf")
    values = {(p.step, p.key): p.value for p in stats.scalar_series(db, run.id)}
    assert math.isnan(values[(2, "loss")]) and values[(2, "lr")] == math.inf
    assert values[(2, "floor")] == -math.inf and values[(2, "huge")] == 1e300
    by_layer = {s.layer: s for s in stats.layer_stats(db, run.id) if s.step == 0}
    assert math.isnan(by_layer["0"].weight_norm) and by_layer["1"].weight_norm == math.inf
    # per step: the four logged, the two global norms and tripwire_check_ms; nothing dropped
    assert stats.count_rows(db, run.id) == (3 * 7, 3 * 2)


def test_huge_activations_overflow_faithfully(sqlite_url, tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    monitor = _watch(model, sqlite_url, tmp_path, run="huge", every=1)
    loss = model(torch.randn(8, 4) * 1e30).pow(2).sum()  # float32 overflows to inf
    loss.backward()
    monitor.log(0, loss=loss)
    monitor.close()
    assert monitor.errors == 0
    db = Database(sqlite_url)
    run = runs.find_run(db, "huge")
    assert stats.scalar_series(db, run.id, ["loss"])[0].value == math.inf
    first = {s.layer: s for s in stats.layer_stats(db, run.id)}
    assert first["0"].act_max > 1e29  # the inputs' true size, not clipped


class OddModel(nn.Module):
    """Embedding, convolution, empty linear layers, a 1-D parameter and one ordinary layer."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.conv = nn.Conv1d(4, 4, 3, padding=1)
        self.empty_in = nn.Linear(0, 4)
        self.empty_out = nn.Linear(4, 0)
        self.fc = nn.Linear(4, 4)
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, tokens):
        x = self.emb(tokens)
        x = self.conv(x.transpose(1, 2)).transpose(1, 2)
        x = x + self.empty_in(x[..., :0])
        return (self.fc(x) * self.scale).sum() + self.empty_out(x).sum()


@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")
def test_embeddings_convolutions_empty_and_1d_parameters(sqlite_url, tmp_path):
    model = OddModel()
    monitor = _watch(model, sqlite_url, tmp_path, run="odd", every=2)
    assert [layer.name for layer in monitor.layers] == ["fc"]  # the empty ones have no spectrum
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(6):
        loss = model(torch.randint(0, 10, (2, 5)))
        loss.backward()
        monitor.log(step, loss=loss)
        opt.step()
        opt.zero_grad()
    monitor.close()
    assert monitor.errors == 0
    db = Database(sqlite_url)
    run = runs.find_run(db, "odd")
    assert [s.step for s in stats.layer_stats(db, run.id)] == [0, 2, 4]
    assert all(math.isfinite(s.sigma1) for s in stats.layer_stats(db, run.id))


def test_a_model_without_linear_layers_still_records_scalars(sqlite_url, tmp_path, caplog):
    model = nn.Sequential(nn.Conv1d(2, 2, 3), nn.ReLU())
    monitor = _watch(model, sqlite_url, tmp_path, run="conv-only", every=1)
    assert "no linear layers" in caplog.text
    for step in range(4):
        loss = model(torch.randn(1, 2, 8)).sum()
        loss.backward()
        monitor.log(step, loss=loss)
    monitor.close()
    assert monitor.errors == 0
    db = Database(sqlite_url)
    run = runs.find_run(db, "conv-only")
    assert [p.step for p in stats.scalar_series(db, run.id, ["loss"])] == [0, 1, 2, 3]
    assert stats.count_rows(db, run.id)[1] == 0


HOSTILE_NAMES = [
    "Robert'); DROP TABLE runs;--",
    'quote"s and \\back\\slashes',
    "日本語の実行 🚀 ünïcödé",
    "<script>alert(1)</script> *bold* <!channel> `code`",
    "%s %(x)s {0} ${HOME} %%",
    "a" * 300,
]


def test_hostile_run_names_are_stored_and_found_verbatim(db, tmp_path):
    for i, name in enumerate(HOSTILE_NAMES):
        model = nn.Linear(3, 3)
        with _watch(model, db.url, tmp_path, run=name, project=name[:20], every=1) as monitor:
            loss = model(torch.randn(2, 3)).sum()
            loss.backward()
            monitor.log(i, loss=loss)
        assert monitor.errors == 0
    assert {r.name for r in runs.list_runs(db)} == set(HOSTILE_NAMES)
    for name in HOSTILE_NAMES:
        assert runs.find_run(db, name).name == name
        assert runs.list_runs(db, name_contains=name[:12])[0].name == name
    assert runs.list_runs(db, name_contains="%") == [runs.find_run(db, HOSTILE_NAMES[4])]


BROKEN_CONFIGS = {
    "not TOML": (b"[engine\ninterval_s = 1\n", "not valid TOML"),
    "not UTF-8": (b"\xff\xfe[engine]\n", "not UTF-8"),
    "a NUL byte": (b'a = "\x00"\n', "not valid TOML"),
    "nested too deeply": (b"x = " + b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    "unknown key": (b"[engine]\nintervall_s = 1\n", "engine.intervall_s: unknown key"),
    "wrong type": (b'[engine]\ninterval_s = "fast"\n', "engine.interval_s"),
    "infinite interval": (b"[engine]\ninterval_s = inf\n", "engine.interval_s"),
    "negative backoff": (b"[retry]\ninitial_backoff_s = -1\n", "retry.initial_backoff_s"),
    "endless retries": (b"[retry]\nmax_attempts = 1000000000000\n", "retry.max_attempts"),
    "unknown predictor": (b"[predictors.nope]\n", "predictors.nope: unknown predictor"),
    "bad threshold": (b'[predictors.sa_collapse]\nexcess = "high"\n', "predictors.sa_collapse"),
    "unknown notifier": (b'[[notifiers]]\nkind = "pager"\n', "notifiers[0].kind"),
    "secret in the file": (
        b'[[notifiers]]\nkind = "slack"\nurl = "https://hooks.slack.com/services/T/B/SECRETXYZ"\n',
        "notifiers[0].url: secrets are read from the environment only",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN_CONFIGS))
def test_a_broken_config_file_is_one_clear_error(case, sqlite_url, tmp_path):
    content, expected = BROKEN_CONFIGS[case]
    path = tmp_path / "tripwire.toml"
    path.write_bytes(content)
    Database(sqlite_url).upgrade()
    for command in (["evaluate"], ["scheduler", "--once"]):
        result = CliRunner().invoke(cli, [*command, "--db", sqlite_url, "--config", str(path)])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.output
        assert expected in lines[0] and str(path) in lines[0]
        assert "SECRETXYZ" not in result.output


def test_a_config_path_that_is_a_directory(sqlite_url, tmp_path):
    Database(sqlite_url).upgrade()
    result = CliRunner().invoke(cli, ["evaluate", "--db", sqlite_url, "--config", str(tmp_path)])
    assert result.exit_code == 1 and "cannot read the configuration" in result.output


def test_a_database_from_a_newer_tripwire_is_refused_clearly(db, tmp_path):
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    message = "the database schema (9999_future) is newer than this Tripwire"
    with pytest.raises(SchemaOutOfDate, match=r"newer than this Tripwire.*pip install -U"):
        collector.watch(nn.Linear(2, 2), db=db.url, spool_dir=tmp_path)
    for command in (["db", "upgrade"], ["scheduler", "--once"], ["evaluate"], ["runs"]):
        result = CliRunner().invoke(cli, [*command, "--db", db.url])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), command
        assert message in result.output, (command, result.output)
    with db.engine.connect() as conn:  # and nothing was changed
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == (
            "9999_future"
        )
