"""Curves found among the figures, drawn as PNG plots next to RESULTS.md (`python -m bench.plots`) (I/O at the edge).

A curve is a set of measured figures of one benchmark and unit that differ only in one integer
input (the x axis, e.g. `policies_in_namespace` or `total_policies`): their names are equal once
the value of that input (written 1000, 1,000 or 1k) and the word after it are taken out, and at
least three values occur. Nothing here knows any benchmark by name, so a benchmark makes a curve
by giving its figures the size in `inputs`. Curves of one benchmark, unit and axis share a plot:
the median as a solid line, the p99 dashed, a target as a dotted horizontal line; x is log-scale.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.stats import Figure, figure_from_json

logger = logging.getLogger(__name__)

BENCH_DIR = Path(__file__).resolve().parent
PREFIX = "curve-"
MIN_POINTS = 3
PREFERRED_AXES = ("policies_in_namespace", "total_policies")
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*")


@dataclass(frozen=True, slots=True)
class Curve:
    benchmark: str
    unit: str
    axis: str
    label: str  # the figures' common name, the size taken out
    points: tuple[tuple[int, Figure], ...]  # sorted by x


@dataclass(frozen=True, slots=True)
class Plot:
    title: str
    filename: str
    curves: tuple[Curve, ...]
    targets: tuple[tuple[str, float], ...] = ()  # (text, value) of the benchmark's targets on this unit and axis


def _spellings(value: int) -> list[str]:
    forms = [f"{value:,}", str(value)]
    if value >= 1000 and value % 1000 == 0:
        forms.append(f"{value // 1000}k")
    return sorted(set(forms), key=len, reverse=True)


def without_size(name: str, value: int) -> str:
    """`name` with the size (and the word after it) taken out; `name` itself when it does not contain it."""
    for form in _spellings(value):
        pattern = rf"(?<![\w+.,\-]){re.escape(form)}(?![\w,.])(\s+[A-Za-z_-]+)?"
        stripped, count = re.subn(pattern, "N", name, count=1)
        if count:
            return stripped
    return name


def _axes(fig: Figure) -> list[tuple[str, int]]:
    return [(k, v) for k, v in fig.inputs.items() if isinstance(v, int) and not isinstance(v, bool)]


def find_curves(figures: Sequence[Figure]) -> list[Curve]:
    """Every curve among the measured figures, each figure in at most one (the preferred axis first)."""
    groups: dict[tuple[str, str, str, str], dict[int, Figure]] = defaultdict(dict)
    for fig in figures:
        if not fig.measured:
            continue
        for axis, value in _axes(fig):
            groups[(fig.benchmark, fig.unit, axis, without_size(fig.name, value))].setdefault(value, fig)

    def rank(key: tuple[str, str, str, str]) -> tuple[int, str]:
        axis = key[2]
        return (PREFERRED_AXES.index(axis) if axis in PREFERRED_AXES else len(PREFERRED_AXES), axis)

    used: set[int] = set()
    curves = []
    for key in sorted(groups, key=lambda k: (k[0], k[1], rank(k), k[3])):
        points = groups[key]
        members = {id(f) for f in points.values()}
        if len(points) < MIN_POINTS or members & used:
            continue
        used |= members
        benchmark, unit, axis, label = key
        curves.append(Curve(benchmark, unit, axis, label, tuple(sorted(points.items()))))
    order = {id(f): i for i, f in enumerate(figures)}
    return sorted(curves, key=lambda c: min(order[id(f)] for _, f in c.points))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower().replace("µ", "u")).strip("-") or "x"


def group_plots(curves: Sequence[Curve], figures: Sequence[Figure] = ()) -> list[Plot]:
    """One plot per benchmark, unit and axis; its target lines are those of every figure of that
    benchmark and unit that has the axis input (a p99 target given at one size only included)."""
    by_key: dict[tuple[str, str, str], list[Curve]] = defaultdict(list)
    for curve in curves:
        by_key[(curve.benchmark, curve.unit, curve.axis)].append(curve)
    plots = []
    for (benchmark, unit, axis), members in by_key.items():
        targets: dict[str, float] = {}
        for fig in [f for c in members for _, f in c.points] + list(figures):
            target = fig.target
            mine = (fig.benchmark, fig.unit) == (benchmark, unit) and axis in fig.inputs
            if mine and target is not None and target.statistic in ("median", "p99", "max"):
                targets.setdefault(target.text, target.value)
        plots.append(
            Plot(
                title=f"{benchmark}: {unit} vs {axis.replace('_', ' ')}",
                filename=f"{PREFIX}{_slug(benchmark)}-{_slug(unit)}-{_slug(axis)}.png",
                curves=tuple(members),
                targets=tuple(targets.items()),
            )
        )
    return plots


def draw(plot: Plot, path: Path) -> None:
    """Write one PNG (matplotlib, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=100)
    values: list[float] = []
    for i, curve in enumerate(plot.curves):
        color, marker = f"C{i % 10}", MARKERS[i % len(MARKERS)]
        xs = [x for x, _ in curve.points]
        medians = [f.summary.median for _, f in curve.points if f.summary]
        p99s = [f.summary.p99 for _, f in curve.points if f.summary]
        ax.plot(xs, medians, marker=marker, color=color, label=f"{curve.label} (median)")
        values += medians
        if any(f.summary and f.summary.runs >= 2 and f.summary.p99 != f.summary.median for _, f in curve.points):
            ax.plot(xs, p99s, marker=marker, markersize=3, linestyle="--", color=color, alpha=0.6,
                    label=f"{curve.label} (p99)")
            values += p99s
    for text, value in plot.targets:
        ax.axhline(value, linestyle=":", color="grey")
        ax.annotate(f"target: {text}", (0.01, value), xycoords=("axes fraction", "data"), fontsize=7, color="grey")
        values.append(value)
    ax.set_xscale("log")
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) > 50:
        if len(positive) < len(values):  # zeros (e.g. 0 writes) stay visible
            ax.set_yscale("symlog", linthresh=min(positive))
            ax.set_ylim(bottom=min(0.0, *values), top=max(values) * 2)
        else:
            ax.set_yscale("log")
    ax.set_xlabel(plot.curves[0].axis.replace("_", " ") + " (log scale)")
    ax.set_ylabel(plot.curves[0].unit)
    ax.set_title(plot.title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_plots(figures: Sequence[Figure], directory: Path = BENCH_DIR) -> list[tuple[str, str]]:
    """Draw every curve's plot into `directory`, remove stale curve PNGs; (title, filename) of each."""
    plots = group_plots(find_curves(figures), figures)
    try:
        import matplotlib  # noqa: F401  (the dev extra installs it)
    except ImportError:
        logger.warning("matplotlib is not installed (pip install -e '.[dev]'): %d plots not drawn", len(plots))
        return []
    written = []
    for plot in plots:
        draw(plot, directory / plot.filename)
        written.append((plot.title, plot.filename))
    keep = {name for _, name in written}
    for stale in directory.glob(f"{PREFIX}*.png"):
        if stale.name not in keep:
            stale.unlink()
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plots", description=__doc__)
    parser.add_argument("--results", type=Path, default=BENCH_DIR / "results.json")
    parser.add_argument("--out", type=Path, default=BENCH_DIR)
    args = parser.parse_args(argv)
    figures = [figure_from_json(o) for o in json.loads(args.results.read_text(encoding="utf-8"))]
    for title, name in write_plots(figures, args.out):
        print(f"{args.out / name}: {title}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
