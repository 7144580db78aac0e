"""bench/plots.py finds the curves among any benchmark's figures by their size input, and draws them."""

from __future__ import annotations

from pathlib import Path

from bench.plots import find_curves, group_plots, without_size, write_plots
from bench.stats import Figure, Target, not_measured, summarize

MEDIAN = Target("median", "<=", 5.0, "median <= 5 ms")


def _fig(benchmark: str, name: str, unit: str, value: float, **inputs: int | str) -> Figure:
    return Figure(benchmark, name, unit, summarize([value, value * 2]), MEDIAN, inputs=inputs)


def test_the_size_and_the_word_after_it_are_taken_out_of_the_name() -> None:
    assert without_size("mutate, 1,000 policies in the namespace", 1000) == "mutate, N in the namespace"
    assert without_size("mutate, 1 policy in the namespace", 1) == "mutate, N in the namespace"
    assert without_size("sync, 50k total policies (nft)", 50_000) == "sync, N policies (nft)"
    # "+1" and "10,000" are other numbers, not the size 1 or 10.
    assert without_size("incremental, +1 policy on 10,000 (legacy)", 1) == "incremental, +1 policy on 10,000 (legacy)"
    assert without_size("incremental, +1 policy on 10,000 (legacy)", 10) == "incremental, +1 policy on 10,000 (legacy)"
    assert without_size("incremental sync (legacy)", 1000) == "incremental sync (legacy)"


def test_curves_are_found_by_any_integer_input_with_three_values_or_more() -> None:
    figures = [
        *(_fig("scale", f"mutate, {n:,} policies", "ms", n / 9, policies_in_namespace=n, runs=3) for n in (1, 10, 100)),
        *(_fig("scale", f"validate, {n:,} policies", "ms", 1.0, policies_in_namespace=n) for n in (1, 10, 100)),
        _fig("scale", "mutate p99, 1,000 policies", "ms", 3.0, policies_in_namespace=1000),  # a single point
        # Another benchmark whose names do not carry the size at all.
        *(_fig("enforcer", "incremental sync (legacy)", "ms", 8.0, total_policies=n) for n in (1000, 10_000, 50_000)),
        *(_fig("enforcer", "incremental sync (nft)", "ms", 9.0, total_policies=n) for n in (1000, 10_000)),  # 2 points
        not_measured("scale", "mutate, 5,000 policies", "ms", MEDIAN, "failed"),
    ]
    curves = find_curves(figures)
    assert [(c.benchmark, c.axis, c.label, [x for x, _ in c.points]) for c in curves] == [
        ("scale", "policies_in_namespace", "mutate, N", [1, 10, 100]),
        ("scale", "policies_in_namespace", "validate, N", [1, 10, 100]),
        ("enforcer", "total_policies", "incremental sync (legacy)", [1000, 10_000, 50_000]),
    ]
    plots = group_plots(curves)
    assert [(p.filename, len(p.curves)) for p in plots] == [
        ("curve-scale-ms-policies-in-namespace.png", 2),
        ("curve-enforcer-ms-total-policies.png", 1),
    ]


def test_write_plots_draws_pngs_and_removes_stale_ones(tmp_path: Path) -> None:
    stale = tmp_path / "curve-gone-ms-x.png"
    stale.write_bytes(b"old")
    figures = [_fig("scale", f"mutate, {n:,} policies", "ms", float(n), policies_in_namespace=n) for n in (1, 10, 100)]
    written = write_plots(figures, tmp_path)
    assert [name for _, name in written] == ["curve-scale-ms-policies-in-namespace.png"]
    assert (tmp_path / written[0][1]).read_bytes().startswith(b"\x89PNG")
    assert not stale.exists()
