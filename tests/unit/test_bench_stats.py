"""Unit tests of the benchmark statistics, targets and the results schema (bench/stats.py)."""

from __future__ import annotations

import json
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.stats import (
    Figure,
    FigureError,
    Floor,
    Target,
    figure_from_json,
    figure_to_json,
    merge_figures,
    not_measured,
    percentile,
    ratios,
    render_markdown,
    summarize,
)

SCHEMA_KEYS = {"name", "unit", "median", "min", "max", "runs", "target", "met", "inputs"}


def test_percentile_interpolates_between_ranks() -> None:
    samples = [10.0, 20.0, 30.0, 40.0, 50.0]
    assert percentile(samples, 0) == 10.0
    assert percentile(samples, 50) == 30.0
    assert percentile(samples, 100) == 50.0
    assert percentile(samples, 25) == 20.0
    assert percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    assert percentile([7.0], 99) == 7.0


def test_percentile_rejects_no_samples_and_bad_q() -> None:
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 50)
    with pytest.raises(ValueError, match=r"0\.\.100"):
        percentile([1.0], 101)


@given(st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=200))
def test_summary_is_ordered_and_matches_statistics(samples: list[float]) -> None:
    s = summarize(samples)
    assert s.min <= s.median <= s.max
    assert s.min <= s.p99 <= s.max
    assert s.median == statistics.median(samples)
    assert s.runs == len(samples)
    # Order of the samples never matters.
    assert summarize(list(reversed(samples))) == s


def test_ratios_pair_runs_and_refuse_mismatch() -> None:
    assert ratios([2.0, 3.0], [1.0, 6.0]) == [2.0, 0.5]
    with pytest.raises(ValueError, match="paired runs"):
        ratios([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="positive"):
        ratios([1.0], [0.0])


def _ratio_figure(ours: list[float], floor: list[float], target: Target) -> Figure:
    return Figure(
        "enforcer",
        "full sync",
        "ms",
        summarize(ours),
        target,
        Floor("restore", summarize(floor), summarize(ratios(ours, floor))),
        inputs={"ports": 10_000, "backend": "legacy"},
    )


def test_met_uses_the_targets_statistic() -> None:
    ratio_target = Target("ratio", "<=", 2.0, "ratio <= 2")
    # Median of per-run ratios: runs 1.5, 3.0, 1.8 -> 1.8 (not the ratio of the medians).
    fig = _ratio_figure([150.0, 300.0, 180.0], [100.0, 100.0, 100.0], ratio_target)
    assert fig.floor is not None and fig.floor.ratio.median == pytest.approx(1.8)
    assert fig.met is True
    assert _ratio_figure([300.0, 300.0, 300.0], [100.0, 100.0, 100.0], ratio_target).met is False

    samples = [float(x) for x in range(1, 101)]
    median_ok = Figure("b", "lat", "ms", summarize(samples), Target("median", "<=", 60.0, "median <= 60 ms"))
    p99_bad = Figure("b", "lat", "ms", summarize(samples), Target("p99", "<=", 60.0, "p99 <= 60 ms"))
    max_ge = Figure("b", "rate", "conn/s", summarize(samples), Target("max", ">=", 100.0, ">= 100"))
    assert (median_ok.met, p99_bad.met, max_ge.met) == (True, False, True)


def test_unmeasured_figure_has_met_null() -> None:
    fig = not_measured("end-to-end", "apply to rule", "ms", Target("median", "<=", 300.0, "median <= 300 ms"), "why")
    assert fig.met is None and not fig.measured
    out = figure_to_json(fig)
    assert out["met"] is None and out["median"] is None and out["runs"] == 0 and out["note"] == "why"


def test_ratio_target_without_floor_is_refused() -> None:
    with pytest.raises(FigureError, match="needs a floor"):
        Figure("b", "x", "ms", summarize([1.0]), Target("ratio", "<=", 2.0, "ratio <= 2"))


def test_bad_target_statistic_is_refused() -> None:
    with pytest.raises(FigureError, match="statistic"):
        Target("mean", "<=", 1.0, "x")  # type: ignore[arg-type]


def test_json_has_the_issue_schema_and_round_trips() -> None:
    fig = _ratio_figure([150.0, 300.0, 180.0], [100.0, 110.0, 90.0], Target("ratio", "<=", 2.0, "ratio <= 2"))
    out = figure_to_json(fig)
    assert out.keys() >= SCHEMA_KEYS
    assert {"floor", "ratio"} <= out.keys()
    assert out["met"] is True and out["inputs"] == {"backend": "legacy", "ports": 10_000}
    # Through real JSON text, as results.json is stored and read back by `--only`.
    back = figure_from_json(json.loads(json.dumps(out)))
    assert figure_to_json(back) == out
    plain = Figure("resolution", "mutate", "µs", summarize([1.0, 2.0]), None)
    assert "floor" not in figure_to_json(plain)
    assert figure_to_json(figure_from_json(figure_to_json(plain))) == figure_to_json(plain)


def test_from_json_names_a_missing_field() -> None:
    out = figure_to_json(Figure("b", "x", "ms", summarize([1.0]), None))
    del out["unit"]
    with pytest.raises(FigureError, match="'unit'"):
        figure_from_json(out)


def test_merge_keeps_benchmarks_not_rerun_in_benchmark_order() -> None:
    old = [Figure(b, f"{b}-old", "ms", summarize([1.0]), None) for b in ("admission", "enforcer", "packets")]
    fresh = [Figure("enforcer", "enforcer-new", "ms", summarize([2.0]), None)]
    merged = merge_figures(old, fresh, ["enforcer"], ["admission", "enforcer", "packets"])
    assert [f.name for f in merged] == ["admission-old", "enforcer-new", "packets-old"]


def test_markdown_shows_spread_ratio_target_and_unmeasured() -> None:
    measured = _ratio_figure([150.0, 300.0, 180.0], [100.0, 100.0, 100.0], Target("ratio", "<=", 2.0, "ratio <= 2"))
    missing = not_measured(
        "end-to-end",
        "apply to rule",
        "ms",
        Target("median", "<=", 300.0, "median <= 300 ms"),
        "control plane not built",
    )
    text = render_markdown([measured, missing], {"CPU": "test x 2"}, {"enforcer": "how it was measured"})
    assert "- CPU: test x 2" in text
    assert "| enforcer | full sync | 180 ms |" in text
    assert "150 - 300" in text and "1.80 (1.50 - 3.00)" in text and "ratio <= 2" in text
    assert "NOT MEASURED" in text and "control plane not built" in text
    assert "## Targets missed" not in text
    slow = _ratio_figure([300.0, 300.0, 300.0], [100.0, 100.0, 100.0], Target("ratio", "<=", 2.0, "ratio <= 2"))
    assert "- enforcer / full sync: ratio 3.00, target ratio <= 2" in render_markdown([slow], {}, {})
    assert "how it was measured" in text and "backend=legacy" in text
