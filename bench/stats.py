"""Benchmark statistics, figures with targets, and their JSON/Markdown rendering (pure).

A figure is one measured quantity: its samples are summarized (median, min, max, p99), and
when it is compared with a floor measured in the same run, the ratio is the median of the
per-run ratios (ours and the floor measured back to back, interleaved).
"""

from __future__ import annotations

import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, get_args

logger = logging.getLogger(__name__)

Statistic = Literal["median", "p99", "max", "ratio"]
STATISTICS: tuple[Statistic, ...] = get_args(Statistic)
Comparison = Literal["<=", ">="]
COMPARISONS: tuple[Comparison, ...] = get_args(Comparison)
JsonScalar = str | int | float | bool | None


class FigureError(ValueError):
    """A figure or its JSON form is inconsistent; the message names the figure and the field."""


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks."""
    if not samples:
        raise ValueError("percentile of no samples: measure at least once")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q={q}: must be within 0..100")
    ordered = sorted(samples)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True, slots=True)
class Summary:
    median: float
    min: float
    max: float
    p99: float
    runs: int


def summarize(samples: Sequence[float]) -> Summary:
    if not samples:
        raise ValueError("summary of no samples: measure at least once")
    return Summary(
        median=statistics.median(samples),
        min=min(samples),
        max=max(samples),
        p99=percentile(samples, 99),
        runs=len(samples),
    )


def ratios(ours: Sequence[float], floor: Sequence[float]) -> list[float]:
    """Per-run ratios ours/floor of runs measured back to back (same index = same run)."""
    if len(ours) != len(floor) or not ours:
        raise ValueError(f"ratios need paired runs: got {len(ours)} of ours and {len(floor)} of the floor")
    if any(f == 0 for f in floor):
        raise ValueError("ratios: a floor run measured 0; the floor must be positive")
    return [o / f for o, f in zip(ours, floor, strict=True)]


@dataclass(frozen=True, slots=True)
class Target:
    statistic: Statistic
    comparison: Comparison
    value: float
    text: str  # how a reader states it, e.g. "p99 <= 10 ms"

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise FigureError(f"target.statistic {self.statistic!r}: use one of {list(STATISTICS)}")
        if self.comparison not in COMPARISONS:
            raise FigureError(f"target.comparison {self.comparison!r}: use one of {list(COMPARISONS)}")


@dataclass(frozen=True, slots=True)
class Floor:
    """The reference measured in the same run; `what` says what it is."""

    what: str
    summary: Summary
    ratio: Summary  # of the per-run ratios ours/floor


@dataclass(frozen=True, slots=True)
class Figure:
    benchmark: str
    name: str
    unit: str
    summary: Summary | None  # None: not measured (see `note`)
    target: Target | None
    floor: Floor | None = None
    inputs: Mapping[str, JsonScalar] = field(default_factory=dict)
    note: str = ""

    def __post_init__(self) -> None:
        if self.target is not None and self.target.statistic == "ratio" and self.floor is None and self.summary:
            raise FigureError(f"figure {self.name!r}: target on the ratio needs a floor")

    @property
    def measured(self) -> bool:
        return self.summary is not None

    def value_of(self, statistic: Statistic) -> float | None:
        if self.summary is None:
            return None
        if statistic == "ratio":
            return self.floor.ratio.median if self.floor else None
        return float(getattr(self.summary, statistic))

    @property
    def met(self) -> bool | None:
        """True/False against the target; None when not measured or without a target."""
        if self.target is None:
            return None
        value = self.value_of(self.target.statistic)
        if value is None:
            return None
        if self.target.comparison == "<=":
            return value <= self.target.value
        return value >= self.target.value


def not_measured(benchmark: str, name: str, unit: str, target: Target | None, reason: str) -> Figure:
    return Figure(benchmark=benchmark, name=name, unit=unit, summary=None, target=target, note=reason)


def mark_unmeasured(figure: Figure, reason: str) -> Figure:
    return replace(figure, summary=None, floor=None, note=reason)


# --- JSON ------------------------------------------------------------------------------------


def _summary_json(s: Summary) -> dict[str, Any]:
    return {"median": s.median, "min": s.min, "max": s.max, "p99": s.p99, "runs": s.runs}


def figure_to_json(fig: Figure) -> dict[str, Any]:
    """The results.json entry: name, unit, median, min, max, runs, floor, ratio, target, met, inputs."""
    s = fig.summary
    out: dict[str, Any] = {
        "benchmark": fig.benchmark,
        "name": fig.name,
        "unit": fig.unit,
        "median": s.median if s else None,
        "min": s.min if s else None,
        "max": s.max if s else None,
        "p99": s.p99 if s else None,
        "runs": s.runs if s else 0,
        "target": (
            {
                "statistic": fig.target.statistic,
                "comparison": fig.target.comparison,
                "value": fig.target.value,
                "text": fig.target.text,
            }
            if fig.target
            else None
        ),
        "met": fig.met,
        "inputs": dict(sorted(fig.inputs.items())),
        "note": fig.note,
    }
    if fig.floor is not None:
        out["floor"] = {"what": fig.floor.what, **_summary_json(fig.floor.summary)}
        out["ratio"] = fig.floor.ratio.median
        out["ratio_min"] = fig.floor.ratio.min
        out["ratio_max"] = fig.floor.ratio.max
        out["ratio_runs"] = fig.floor.ratio.runs
    return out


def _need(obj: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise FigureError(f"{where}: missing field {key!r}; regenerate results.json with `python -m bench`")
    return obj[key]


def _summary_from(obj: Mapping[str, Any], where: str) -> Summary:
    return Summary(
        median=float(_need(obj, "median", where)),
        min=float(_need(obj, "min", where)),
        max=float(_need(obj, "max", where)),
        p99=float(_need(obj, "p99", where)),
        runs=int(_need(obj, "runs", where)),
    )


def figure_from_json(obj: Mapping[str, Any]) -> Figure:
    """Inverse of figure_to_json (so `--only` can keep the other benchmarks' figures)."""
    where = f"figure {obj.get('name', '?')!r}"
    target_obj = _need(obj, "target", where)
    target = (
        Target(
            statistic=_need(target_obj, "statistic", where + ".target"),
            comparison=_need(target_obj, "comparison", where + ".target"),
            value=float(_need(target_obj, "value", where + ".target")),
            text=str(_need(target_obj, "text", where + ".target")),
        )
        if target_obj
        else None
    )
    summary = _summary_from(obj, where) if _need(obj, "median", where) is not None else None
    floor = None
    if obj.get("floor") and summary is not None:
        floor_obj = obj["floor"]
        ratio = Summary(
            median=float(_need(obj, "ratio", where)),
            min=float(_need(obj, "ratio_min", where)),
            max=float(_need(obj, "ratio_max", where)),
            p99=float(_need(obj, "ratio_max", where)),
            runs=int(_need(obj, "ratio_runs", where)),
        )
        what = str(_need(floor_obj, "what", where + ".floor"))
        floor = Floor(what, _summary_from(floor_obj, where + ".floor"), ratio)
    return Figure(
        benchmark=str(_need(obj, "benchmark", where)),
        name=str(_need(obj, "name", where)),
        unit=str(_need(obj, "unit", where)),
        summary=summary,
        target=target,
        floor=floor,
        inputs=dict(obj.get("inputs") or {}),
        note=str(obj.get("note", "")),
    )


def merge_figures(
    previous: Sequence[Figure], fresh: Sequence[Figure], rerun: Sequence[str], order: Sequence[str]
) -> list[Figure]:
    """Previous figures of benchmarks not rerun, plus the fresh ones, grouped in benchmark `order`."""
    kept = [f for f in previous if f.benchmark not in rerun]
    rank = {name: i for i, name in enumerate(order)}
    # sorted() is stable: within a benchmark the figures keep the order they were produced in.
    return sorted([*kept, *fresh], key=lambda f: rank.get(f.benchmark, len(rank)))


# --- Markdown --------------------------------------------------------------------------------


def format_value(value: float, unit: str) -> str:
    if unit in ("req/s", "conn/s"):
        return f"{value:,.0f}"
    if unit == "MB":
        return f"{value:,.1f}"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _met_text(met: bool | None, measured: bool) -> str:
    if not measured:
        return "NOT MEASURED"
    if met is None:
        return "-"
    return "yes" if met else "**NO**"


def render_table(figures: Sequence[Figure]) -> str:
    header = (
        "| benchmark | figure | median | p99 | min - max | runs | floor (median) | ratio (min - max) | target | met |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    rows = []
    for f in figures:
        u = f.unit
        s = f.summary
        if s is None:
            median = p99 = spread = "-"
            runs = "0"
        else:
            median = f"{format_value(s.median, u)} {u}"
            p99 = f"{format_value(s.p99, u)}" if s.runs >= 2 else "-"
            spread = f"{format_value(s.min, u)} - {format_value(s.max, u)}"
            runs = str(s.runs)
        if f.floor is not None and s is not None:
            floor = f"{format_value(f.floor.summary.median, u)} {u}"
            r = f.floor.ratio
            ratio = f"{r.median:.2f} ({r.min:.2f} - {r.max:.2f})"
        else:
            floor = ratio = "-"
        target = f.target.text if f.target else "-"
        rows.append(
            f"| {f.benchmark} | {f.name} | {median} | {p99} | {spread} | {runs} | {floor} | {ratio} | {target} "
            f"| {_met_text(f.met, f.measured)} |"
        )
    return header + "\n".join(rows) + "\n"


def render_markdown(
    figures: Sequence[Figure],
    machine: Mapping[str, str],
    notes: Mapping[str, str],
    plots: Sequence[tuple[str, str]] = (),
) -> str:
    """RESULTS.md: machine and versions, the table, the plots of the curves (title, PNG file name),
    then per-benchmark method notes and inputs."""
    lines = ["# nodeport-guard benchmark results", "", "Written by `make bench` (`python -m bench`); do not edit.", ""]
    lines += ["## Machine and versions", ""]
    lines += [f"- {k}: {v}" for k, v in machine.items()]
    lines += ["", "## Figures", "", render_table(figures)]
    if plots:
        legend = "Drawn from results.json by `bench/plots.py` (median solid, p99 dashed, log-scale x)."
        lines += ["## Curves", "", legend, ""]
        for title, filename in plots:
            lines += [f"### {title}", "", f"![{title}]({filename})", ""]
    missed = [f for f in figures if f.met is False]
    if missed:
        lines += ["## Targets missed", ""]
        for f in missed:
            assert f.target is not None
            value = f.value_of(f.target.statistic)
            shown = (
                f"{value:.2f}" if f.target.statistic == "ratio" else f"{format_value(value or 0.0, f.unit)} {f.unit}"
            )
            lines.append(f"- {f.benchmark} / {f.name}: {f.target.statistic} {shown}, target {f.target.text}")
        lines.append("")
    unmeasured = [f for f in figures if not f.measured]
    if unmeasured:
        lines += ["## Not measured", ""]
        lines += [f"- {f.benchmark} / {f.name}: {f.note or 'no reason recorded'}" for f in unmeasured]
        lines.append("")
    lines += ["## Method and inputs", ""]
    benchmarks = list(dict.fromkeys(f.benchmark for f in figures))
    for b in benchmarks:
        lines += [f"### {b}", ""]
        if b in notes:
            lines += [notes[b], ""]
        for f in (f for f in figures if f.benchmark == b):
            inputs = ", ".join(f"{k}={v}" for k, v in sorted(f.inputs.items()))
            extra = f" Note: {f.note}" if f.note and f.measured else ""
            floor = f" Floor: {f.floor.what}." if f.floor else ""
            lines.append(f"- **{f.name}**: inputs: {inputs or '-'}.{floor}{extra}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
