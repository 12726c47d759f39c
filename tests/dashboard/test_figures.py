"""Figure builders on data read back from a real database (SQLite file)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from sample_runs import LAYERS, add_alerts, write_run

from dashboard import figures, insights
from storage import Database, series
from storage.alerts import list_alerts
from storage.series import LayerMatrix


@pytest.fixture
def db(tmp_path):
    database = Database(f"sqlite:///{tmp_path / 'fig.db'}")
    database.upgrade()
    yield database
    database.dispose()


@pytest.fixture
def exploded(db):
    run_id = write_run(db, name="exploded", steps=300, explode_at=200, status="finished")
    add_alerts(db, run_id, 299)
    return run_id


def test_scalars_figure_has_a_row_per_key_and_alert_markers_with_hover(db, exploded):
    df = series.scalar_frame(db, exploded)
    fig = figures.scalars_figure(df, alerts=list_alerts(db, run_id=exploded), mark_step=220)
    names = [t.name for t in fig.data]
    assert names.count("loss") == 1 and "critical alert" in names and "warning alert" in names
    critical = next(t for t in fig.data if t.name == "critical alert")
    assert list(critical.x) == [170]
    assert "sa_collapse" in critical.text[0] and "blocks.1.attn.proj" in critical.text[0]
    assert critical.y[0] == pytest.approx(df[(df.key == "loss") & (df.step == 170)].value.iloc[0])
    assert [a.text for a in fig.layout.annotations][:3] == [
        "loss",
        "learning rate",
        "gradient norm",
    ]


def test_scalars_figure_marks_non_finite_values(db):
    run_id = write_run(db, name="nan", steps=120, nan=True)
    fig = figures.scalars_figure(series.scalar_frame(db, run_id))
    bad = [t for t in fig.data if t.name == "non-finite"]
    assert bad and {"loss = NaN", "loss = +Inf"} <= {text.split(": ")[1] for text in bad[0].text}
    loss = next(t for t in fig.data if t.name == "loss")
    assert all(math.isfinite(v) for v in loss.y)
    fig.to_json()  # serialisable for the browser


def test_overlay_draws_one_line_per_run(db, exploded):
    other = write_run(db, name="base", steps=300)
    df = series.scalar_frame(db, exploded).assign(run="exploded")
    df2 = series.scalar_frame(db, other).assign(run="base")
    fig = figures.scalars_figure(pd.concat([df, df2]), keys=("loss",))
    assert {t.name for t in fig.data if t.mode == "lines"} == {"exploded", "base"}


def test_sa_heatmap_layers_in_model_order_and_collapse_visible(db, exploded):
    grid = series.layer_matrix(db, exploded, "sa_imbalance")
    fig = figures.layer_heatmap(grid, zmin=0, zmax=1)
    heat = fig.data[0]
    assert heat.type == "heatmap" and list(heat.y) == LAYERS
    assert fig.layout.yaxis.autorange == "reversed"
    assert max(v for v in heat.z[4] if v is not None) > 0.9
    assert insights.first_collapses(grid)[0] == ("blocks.1.attn.proj", 160)


def test_collapse_is_judged_against_each_layers_own_baseline():
    # After a LayerNorm or GELU a layer's SA signs can be one-sided from the start: that layer
    # is not "first to collapse"; one that goes from mixed to one-sided is.
    steps = list(range(0, 200, 10))
    grid = LayerMatrix(
        "sa_imbalance",
        ["after_norm", "drifting"],
        steps,
        [[0.95] * 20, [0.1] * 15 + [0.9] * 5],
    )
    assert insights.first_collapses(grid) == [("drifting", 150)]
    assert insights.default_layer(grid, grid.layers, insights.first_collapses(grid)) == "drifting"


def test_heatmap_of_norms_is_log_coloured_and_non_finite_cells_are_marked(db):
    run_id = write_run(db, name="nan", steps=120, nan=True)
    fig = figures.layer_heatmap(series.layer_matrix(db, run_id, "weight_norm"))
    assert fig.data[0].colorbar.title.text == "log10"
    marks = [t for t in fig.data if t.name == "non-finite"]
    assert marks and set(marks[0].text) == {"+Inf"}
    fig.to_json()


def test_sa_hist_figure_fractions_and_p_plus(db, exploded):
    hist = series.sa_hist_series(db, exploded, LAYERS[4])
    fig = figures.sa_hist_figure(hist)
    heat, line = fig.data
    assert heat.type == "heatmap" and len(heat.y) == 16 and len(heat.x) == 30
    column = [row[-1] for row in heat.z]
    assert sum(column) == pytest.approx(1.0)
    assert sum(column[8:]) > 0.9  # collapsed onto positive SA by the end
    assert line.y[-1] == pytest.approx(0.95)


def test_empty_inputs_give_message_figures(db):
    assert (
        "no layer statistics"
        in figures.layer_heatmap(series.layer_matrix(db, 1)).layout.annotations[0].text
    )
    assert (
        "no histograms"
        in figures.sa_hist_figure(series.sa_hist_series(db, 1, "x")).layout.annotations[0].text
    )
    assert figures.alerts_timeline([]).layout.annotations[0].text == "no alerts"
    assert figures.scalars_figure(series.scalar_frame(db, 1)).data


def test_alerts_timeline_one_trace_per_severity(db, exploded):
    rows = figures.timeline_rows(list_alerts(db), {exploded: "exploded"})
    fig = figures.alerts_timeline(rows)
    assert {t.name for t in fig.data} == {"critical", "warning"}


def test_layer_lines_figure(db, exploded):
    df = series.layer_lines(db, exploded, [LAYERS[0], LAYERS[4]], "sigma1")
    fig = figures.layer_lines_figure(df, "sigma1")
    assert [t.name for t in fig.data] == [LAYERS[0], LAYERS[4]]


def test_colour_scales_avoid_streamlits_placeholder_colours():
    # Streamlit repaints #000001..#000010; Inferno starts at #000004 (found in the browser test).
    stops = figures.colorscale("Inferno")
    assert stops[0][1] == "#010105" and stops[-1][1] == "#fcffa4"
    assert figures.colorscale("Viridis")[0][1] == "#440154"


def test_real_exploded_run_loss_on_log_axis_with_non_finite_marks(real_dbs):
    url, uid = real_dbs["alerts"]
    db = Database(url)
    from storage import runs

    run = runs.find_run(db, uid)
    df = series.scalar_frame(db, run.id)
    fig = figures.scalars_figure(df, alerts=list_alerts(db, run_id=run.id))
    assert fig.layout.yaxis.type == "log"  # the loss spans ~30 decades
    assert fig.layout.yaxis3.type != "log"  # the gradient norm does not (before it went NaN)
    assert any(t.name == "non-finite" for t in fig.data)
    assert any(t.name == "critical alert" for t in fig.data)
    grid = series.layer_matrix(db, run.id, "sa_imbalance")
    nonfinite = insights.first_nonfinite(grid)
    assert nonfinite and all(step > 50 for _, step in nonfinite)
    assert all(
        name not in dict(nonfinite) or step < dict(nonfinite)[name]
        for name, step in insights.first_collapses(grid)
    )
    db.dispose()


def test_alerts_of_one_run_get_their_own_lanes(db, exploded):
    rows = figures.timeline_rows(list_alerts(db), {exploded: "exploded"})
    fig = figures.alerts_timeline(rows)
    lanes = {y for t in fig.data for y in t.y if y}
    assert lanes == {"exploded · sa_collapse · blocks.1.attn.proj", "exploded · loss_spike"}


def test_loss_that_explodes_a_few_hundredfold_gets_a_log_axis():
    # The demo's loss: ~2 while it trains, then hundreds after it explodes. On a linear axis
    # the healthy part (where the warnings are) is a flat line at 0.
    def frame(peak):
        values = [2.5 - i / 200 for i in range(200)] + [2.0 * peak] * 10
        return pd.DataFrame({"step": range(len(values)), "key": "loss", "value": values})

    assert figures.scalars_figure(frame(500), keys=["loss"]).layout.yaxis.type == "log"
    assert figures.scalars_figure(frame(20), keys=["loss"]).layout.yaxis.type != "log"


def test_alert_markers_sit_on_their_own_runs_curve_when_runs_are_overlaid():
    # The run page concatenates its run's rows and each overlaid run's: a marker took its y from
    # whichever run's rows the bisection landed in (diverges' 3.1 at step 210 drawn at 0.8).
    from types import SimpleNamespace

    def loss(run, value):
        steps = range(0, 300, 5)
        return pd.DataFrame(
            {"step": steps, "key": "loss", "value": [value(s) for s in steps], "run": run}
        )

    diverges = loss("diverges", lambda s: 1.0 + s / 100)
    healthy = loss("healthy (abc123)", lambda s: 0.8)
    alert = SimpleNamespace(
        predictor="loss_exploded", layer=None, severity="critical", state="firing",
        first_step=200, fired_step=210, message="loss 3.1",
    )  # fmt: skip
    for df, alerts_run in (
        (pd.concat([diverges, healthy], ignore_index=True), None),  # the page's run comes first
        (pd.concat([healthy, diverges], ignore_index=True), "diverges"),
    ):
        fig = figures.scalars_figure(df, keys=("loss",), alerts=[alert], alerts_run=alerts_run)
        critical = next(t for t in fig.data if t.name == "critical alert")
        assert list(critical.x) == [210] and critical.y[0] == pytest.approx(3.1)


def test_a_constant_series_is_drawn_mid_axis():
    # Plotly's range for a constant series is value ± 1: a constant lr of 3e-3 hugged the 0 line.
    steps = range(100)
    df = pd.DataFrame(
        {
            "step": [*steps, *steps],
            "key": ["loss"] * 100 + ["lr"] * 100,
            "value": [2.0 - s / 100 for s in steps] + [3e-3] * 100,
        }
    )
    fig = figures.scalars_figure(df, keys=("loss", "lr"))
    low, high = fig.layout.yaxis2.range
    assert low <= 3e-3 <= high and high - low == pytest.approx(6e-3)
    assert fig.layout.yaxis.range is None  # a varying series keeps Plotly's own range
    flat_zero = pd.DataFrame({"step": steps, "key": "lr", "value": 0.0})
    assert list(figures.scalars_figure(flat_zero, keys=("lr",)).layout.yaxis.range) == [-1, 1]


def test_empty_charts_say_why_once_the_run_has_ended(db):
    run_id = write_run(db, name="no-layers", steps=50, layers=(), status="finished")
    df = series.scalar_frame(db, run_id)

    def notes(fig):
        return [
            a.text for a in fig.layout.annotations if a.text not in figures.SCALAR_TITLES.values()
        ]

    assert notes(figures.scalars_figure(df)) == ["no gradient norm yet"]
    (note,) = notes(figures.scalars_figure(df, ended=True))
    assert note.startswith("no gradient norm: ") and "monitored layers" in note
    grid = series.layer_matrix(db, run_id, "sa_imbalance")
    assert figures.layer_heatmap(grid).layout.annotations[0].text.endswith("yet")
    ended = figures.layer_heatmap(grid, ended=True).layout.annotations[0].text
    assert "yet" not in ended and ended.endswith(figures.NO_LAYER_STATS)


def test_names_show_literally_in_plotly_text():
    # Plotly reads names as HTML of its own: a run named <a href=...> made a live link in the
    # alerts timeline and the overlay legend; %{...} in a hovertemplate is substituted.
    from datetime import datetime

    link = '<a href="http://evil.example">sign in</a>'
    rows = [
        {
            "run": link, "predictor": "loss_spike", "layer": link, "severity": "critical",
            "state": "firing", "created_at": datetime(2026, 1, 1), "updated_at": datetime(2026, 1, 1),
            "message": link,
        }
    ]  # fmt: skip
    key = "tokens %{y}"
    df = pd.DataFrame({"step": [0, 1], "key": key, "value": [1.0, 2.0], "run": link})
    grid = LayerMatrix("sa_imbalance", [link], [0, 10], [[0.1, math.nan]])
    for fig in (
        figures.alerts_timeline(rows),
        figures.scalars_figure(df, keys=(key,)),
        figures.layer_heatmap(grid),
        figures.layer_lines_figure(pd.DataFrame({"step": [0], "layer": link, "value": [1.0]}), "x"),
    ):
        spec = fig.to_json()
        assert "<a " not in spec and "&lt;a href=" in spec
        assert not [t for t in fig.data if key in (t.hovertemplate or "")]
