"""Each benchmark runs end to end at tiny sizes, so it cannot rot. No timing is asserted."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import warnings

import pytest
import torch

from bench import check_cost, common, device_parity, host_memory, overhead, storage_throughput
from collector.layers import select_layers
from tests import needs


def test_write_section_replaces_only_its_own(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Prediction\n\nkeep me\n\n## Overhead (cpu)\n\nold\n")
    common.write_section("Overhead (cpu)", "new", doc)
    common.write_section("Check cost (cpu)", "added", doc)
    text = doc.read_text()
    assert "keep me" in text and "new" in text and "old" not in text
    assert text.index("## Prediction") < text.index("## Overhead") < text.index("## Check cost")


PREDICTION_COMMANDS = [
    "bench.prediction",
    *(
        f"bench.prediction.{name}"
        for name in ("coincidence", "fresh", "held", "llama", "retrained", "probe", "sharpness")
    ),
]


@pytest.mark.parametrize("module", PREDICTION_COMMANDS)
def test_prediction_commands_help_keeps_their_example_lines(module):
    doc = importlib.import_module(module if module != "bench.prediction" else module + ".__main__")
    examples = [line.strip() for line in doc.__doc__.splitlines() if line.startswith("python -m")]
    shown = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert f"usage: python -m {module}" in shown
    assert all(line in shown.splitlines() for line in examples), shown


def test_overhead_runs_every_variant(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = overhead.main(
        ["--sizes", "tiny", "--rounds", "1", "--every", "2", "--no-memory", "--no-write"]
    )
    (result,) = out["results"]
    assert [r["variant"] for r in result["rows"]] == list(overhead.VARIANTS)
    assert all(r["cpu_step_s"] > 0 and r["wall_step_s"] > 0 for r in result["rows"])
    assert all(not r["errors"] for r in result["rows"])  # the collector itself did not fail


def test_overhead_under_bf16_autocast():
    out = overhead.main(
        ["--sizes", "tiny", "--rounds", "1", "--every", "2", "--no-memory", "--no-write"]
        + ["--autocast", "bf16", "--variants", "none,tripwire"]
    )
    (result,) = out["results"]
    assert [r["variant"] for r in result["rows"]] == ["none", "tripwire"]
    assert not result["rows"][1]["errors"]


def test_device_parity_on_the_cpu_is_exact_and_shows_the_loss_scale():
    ddp = "DDP rank 0 (all-reduces left out)"
    setups = f"fp32,fp16 GradScaler without unscale_,{ddp}"
    out = device_parity.main(["--device", "cpu", "--setups", setups, "--no-write"])
    reference, results = out["reference"], out["results"]
    for setup in ("fp32", ddp):  # one initialisation, one device: the same numbers
        same = device_parity.compare(results[setup]["rows"], reference["rows"])
        assert set(same.values()) == {0.0}, setup
        assert results[setup]["errors"] == 0
    scaled = results["fp16 GradScaler without unscale_"]
    diffs = device_parity.compare(scaled["rows"], reference["rows"])
    assert diffs[(0, "grad_norm")] == pytest.approx(2.0**16 - 1, rel=1e-2)  # GradScaler's scale
    assert scaled["errors"] == 0 and device_parity.all_finite(scaled["rows"], reference["rows"])
    missing = dict(scaled["rows"])
    missing.popitem()  # a check's row the writer thread dropped
    assert not device_parity.all_finite(missing, reference["rows"])


def test_gpu_script_runs_its_steps_quickly_on_the_cpu(tmp_path):
    # bench/gpu.sh is written for a GPU held for minutes: a step that broke would waste one.
    docs = common.DOCS.read_text(encoding="utf-8")
    env = dict(os.environ, DEVICE="cpu", QUICK="1", PYTHON=sys.executable, WANDB_MODE="offline")
    proc = subprocess.run(
        ["bash", "bench/gpu.sh", str(tmp_path)],
        cwd=common.ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    steps = ["overhead", "overhead-bf16", "check-cost", "parity", "overhead-llama", "host-memory"]
    assert [line.split(":")[0] for line in proc.stdout.splitlines()] == steps
    assert all(": exit 0 after" in line for line in proc.stdout.splitlines()), proc.stdout
    assert "## Device parity (cpu)" in (tmp_path / "parity.log").read_text()
    assert "**llama-tiny**" in (tmp_path / "overhead-llama.log").read_text()
    assert "tiny GPT on cpu: collector.watch" in (tmp_path / "host-memory.log").read_text()
    assert common.DOCS.read_text(encoding="utf-8") == docs  # QUICK writes nothing


def test_memory_probe_reports_host_memory():
    probe = overhead.memory_probe("tiny", "tripwire", "cpu", steps=4, every=2)
    assert isinstance(probe["setup"], int) and isinstance(probe["training"], int)  # RSS can shrink
    assert probe["device_peak"] is None


def test_host_memory_names_the_op_that_grew_the_resident_set():
    mode = host_memory.RssByOp()
    with mode:
        small = torch.ones(16)
        big = torch.ones(64 * host_memory.MiB // 4)  # written, so resident: 64 MiB
    assert big.sum() > 0 and small.sum() == 16
    (row,) = mode.rows
    assert row[0] > 32 * host_memory.MiB and ("ones" in row[1] or "full" in row[1])


def test_host_memory_runs_a_watched_loop(capsys):
    result = host_memory.main(["--device", "cpu", "--size", "tiny", "--top", "3"])
    assert set(result["kinds"]) == {"RssAnon", "RssFile", "RssShmem"}
    assert "tiny GPT on cpu: collector.watch" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["tiny", "llama-tiny"])
def test_a_size_builds_the_model_its_reports_describe(name):
    if name.startswith("llama"):
        needs.module("transformers")
    size = overhead.Size.named(name)
    model, _, x = overhead.build(size, "cpu")
    assert len(select_layers(model)) == size.linear_layers
    assert model(x, x).ndim == 0  # the loss


def test_check_cost_parts_and_svd_comparison():
    out = check_cost.main(
        [
            "--sizes",
            "tiny",
            "--rounds",
            "1",
            "--svd-steps",
            "21",
            "--log-calls",
            "200",
            "--no-write",
        ]
    )
    (result,) = out["results"]
    assert set(check_cost.PARTS) <= set(result["breakdown"])
    svd = result["svd"]
    assert svd["checks"] > 0 and svd["svd_s"] > 0
    for warm in svd["warm"].values():
        assert warm["pairs"] == svd["layers"] * svd["checks"]
        assert 0 <= warm["sigma_median"] < 1
    assert all(us > 0 for us in out["log"].values())


def test_check_cost_refuses_svd_steps_without_a_warm_check(capsys):
    with pytest.raises(SystemExit) as exited:
        check_cost.main(["--svd-steps", str(check_cost.SVD_EVERY), "--no-write"])
    assert exited.value.code == 2
    assert "--svd-steps must be at least 11" in capsys.readouterr().err


@pytest.mark.parametrize("scheduler", [False, True])
def test_storage_throughput_on_sqlite(scheduler):
    argv = ["--layers", "3", "--checks", "4", "--size-checks", "4", "--no-pg", "--no-write"]
    argv += (
        ["--runs", "2", "--tick-checks", "2", "--ticks", "1"] if scheduler else ["--no-scheduler"]
    )
    (result,) = storage_throughput.main(argv).values()
    assert result["writer"]["complete"] and result["size"] > 0
    assert result["copy"]["rows"] == 4 * (3 + 40)  # 4 checks: 3 layer rows and 40 scalars each
    if scheduler:
        assert result["scheduler"]["first_s"] > 0


def test_storage_throughput_leaves_no_database_it_created(pg_server_url, monkeypatch):
    import uuid

    from sqlalchemy import create_engine, text

    name = f"tripwire_bench_{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(storage_throughput, "BENCH_DB", name)
    admin = create_engine(pg_server_url, isolation_level="AUTOCOMMIT")

    def exists() -> bool:
        with admin.connect() as conn:
            return bool(
                conn.scalar(text("select 1 from pg_database where datname = :n"), {"n": name})
            )

    try:
        with storage_throughput.pg_schema(pg_server_url):
            assert exists()
        assert not exists()
        with admin.connect() as conn:  # one that was there before stays
            conn.execute(text(f'create database "{name}"'))
        with storage_throughput.pg_schema(pg_server_url):
            pass
        assert exists()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'drop database if exists "{name}"'))
        admin.dispose()


def test_device_parity_counts_only_the_sync_warnings(monkeypatch):
    # No GPU here: torch's switch is stood in for, with the warnings it gives on a GPU.
    def set_mode(mode):
        if mode == "warn":
            warnings.warn(
                "Synchronization debug mode is a prototype feature and does not yet "
                "detect all synchronizing operations",
                stacklevel=1,
            )

    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", set_mode)
    with device_parity._syncs_counted("cuda", enabled=True) as syncs:
        for _ in range(2):
            warnings.warn("called a synchronizing CUDA operation", stacklevel=1)
        warnings.warn("something else", stacklevel=1)
    assert len(syncs) == 2
    with device_parity._syncs_counted("cpu", enabled=True) as syncs:
        assert syncs is None


def test_dashboard_scale_builds_a_small_run_and_never_reuses_one_cut_short(tmp_path, capsys):
    from bench import dashboard_scale
    from storage import Database, runs, stats

    db = Database(f"sqlite:///{tmp_path / 'scale.db'}")
    db.upgrade()
    first = dashboard_scale.built_run(db, layers=5, checks=20, every=10)  # shorter than 500 steps
    assert stats.count_rows(db, first) == (3 * 200, 5 * 20)
    assert dashboard_scale.built_run(db, layers=5, checks=20, every=10) == first  # reused
    with db.session() as s:  # a build killed before it finished leaves a running run
        runs.finish(s, first, status="running", at=runs.get_run(db, first).started_at)
    again = dashboard_scale.built_run(db, layers=5, checks=20, every=10)
    assert runs.get_run(db, again).status == "finished"
    assert stats.count_rows(db, again) == (3 * 200, 5 * 20)  # built again, not doubled
    printed = capsys.readouterr().out
    assert printed.count("building") == 2 and printed.count("reusing") == 1
