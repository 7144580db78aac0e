"""`python -m bench [--only NAME[,NAME]]`: run the benchmarks, write results.json and RESULTS.md (I/O).

Exit status: 0 when every selected benchmark measured (targets missed are reported, not fatal),
1 when one could not measure (its figures say why), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import ModuleType

from bench import (
    admission,
    canary,
    doors_size,
    drop_scrape,
    end_to_end,
    enforcer_memory,
    enforcer_sync,
    node_status,
    packets,
    plots,
    resolution,
    scale_cluster,
    scale_core,
    scale_http,
    scale_reconciler,
)
from bench.stats import Figure, figure_from_json, figure_to_json, mark_unmeasured, merge_figures, render_markdown

logger = logging.getLogger("bench")

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_JSON = BENCH_DIR / "results.json"
RESULTS_MD = BENCH_DIR / "RESULTS.md"


@dataclass(frozen=True, slots=True)
class Benchmark:
    name: str
    run: Callable[[Path], list[Figure]]
    expected: Callable[[], list[Figure]]  # the figures it produces, unmeasured (for failure reports)
    notes: str


def _benchmark(module: ModuleType) -> Benchmark:
    return Benchmark(module.NAME, module.run, getattr(module, "expected_figures", list), module.NOTES)


BENCHMARKS: tuple[Benchmark, ...] = tuple(
    _benchmark(m) for m in (
        admission,
        resolution,
        scale_core,
        scale_http,
        scale_reconciler,
        scale_cluster,
        enforcer_sync,
        end_to_end,
        packets,
        enforcer_memory,
        node_status,
        drop_scrape,
        canary,
        doors_size,
    )
)
ORDER = tuple(b.name for b in BENCHMARKS)


def _command_output(argv: Sequence[str]) -> str:
    if shutil.which(argv[0]) is None:
        return "not installed"
    proc = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=30)
    return (proc.stdout or proc.stderr).strip().splitlines()[0] if (proc.stdout or proc.stderr).strip() else "?"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _memory_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) // 1024} MB"
    except OSError:
        pass
    return "?"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info(started: datetime.datetime, load_before: tuple[float, float, float]) -> dict[str, str]:
    commit = subprocess.run(
        ["git", "-C", str(BENCH_DIR.parent), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "date (UTC)": started.strftime("%Y-%m-%d %H:%M"),
        "git commit": commit or "?",
        "CPU": f"{_cpu_model()} x {os.cpu_count()}",
        "memory": _memory_total(),
        "kernel": platform.release(),
        "Python": platform.python_version(),
        "load average before the run (1/5/15 min)": " / ".join(f"{x:.2f}" for x in load_before),
        "iptables": _command_output(["iptables-legacy", "--version"])
        + "; "
        + _command_output(["iptables-nft", "--version"]),
        "ipset": _command_output(["ipset", "--version"]),
        "packages": ", ".join(
            f"{d} {_version(d)}" for d in ("flask", "gunicorn", "kubernetes", "python-iptables", "cryptography")
        ),
    }


def _load_previous() -> list[Figure]:
    if not RESULTS_JSON.exists():
        return []
    try:
        return [figure_from_json(o) for o in json.loads(RESULTS_JSON.read_text(encoding="utf-8"))]
    except (ValueError, TypeError) as exc:
        logger.warning("ignoring unreadable %s: %s", RESULTS_JSON, exc)
        return []


def run_benchmark(bench: Benchmark, workdir: Path) -> tuple[list[Figure], bool]:
    """(figures, measured): a benchmark that raises yields its expected figures marked unmeasured."""
    started = time.monotonic()
    print(f"==> {bench.name}", flush=True)
    try:
        figures = bench.run(workdir)
        ok = all(f.measured for f in figures) and bool(figures)
    except Exception as exc:
        traceback.print_exc()
        reason = f"failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
        figures = [mark_unmeasured(f, reason) for f in bench.expected()]
        ok = False
    for f in figures:
        value = f"{f.summary.median:.4g} {f.unit}" if f.summary else f"NOT MEASURED ({f.note})"
        ratio = f" ratio {f.floor.ratio.median:.2f}" if f.floor else ""
        print(f"    {f.name}: {value}{ratio} target {f.target.text if f.target else '-'} met={f.met}", flush=True)
    print(f"    ({time.monotonic() - started:.0f} s)", flush=True)
    return figures, ok


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(ORDER)}")
    parser.add_argument("--no-write", action="store_true", help="print figures without writing the results files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    selected = [s.strip() for s in args.only.split(",") if s.strip()] or list(ORDER)
    unknown = sorted(set(selected) - set(ORDER))
    if unknown:
        parser.error(f"--only {','.join(unknown)}: unknown benchmark; choose from {', '.join(ORDER)}")
    if os.geteuid() != 0:
        print("python -m bench: needs root (network namespaces, iptables, ipset)", file=sys.stderr)
        return 2

    started = datetime.datetime.now(datetime.UTC)
    load_before = os.getloadavg()
    clock = time.monotonic()
    fresh: list[Figure] = []
    all_ok = True
    with tempfile.TemporaryDirectory(prefix="npg-bench-") as tmp:
        for bench in BENCHMARKS:
            if bench.name not in selected:
                continue
            workdir = Path(tmp) / bench.name
            workdir.mkdir()
            figures, ok = run_benchmark(bench, workdir)
            fresh.extend(figures)
            all_ok = all_ok and ok
    elapsed = time.monotonic() - clock
    print(f"==> done in {elapsed / 60:.1f} min", flush=True)
    if args.no_write:
        return 0 if all_ok else 1

    figures = merge_figures(_load_previous(), fresh, selected, ORDER)
    machine = machine_info(started, load_before)
    machine["benchmarks run"] = f"{', '.join(selected)} in {elapsed / 60:.1f} min"
    # Other work on the machine (builds, other test runs) shows here; the ratios are taken within a run.
    machine["load average after the run (1/5/15 min)"] = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    notes = {b.name: b.notes for b in BENCHMARKS}
    RESULTS_JSON.write_text(json.dumps([figure_to_json(f) for f in figures], indent=1) + "\n", encoding="utf-8")
    drawn = plots.write_plots(figures, BENCH_DIR)  # the curves, as PNGs next to RESULTS.md
    RESULTS_MD.write_text(render_markdown(figures, machine, notes, drawn), encoding="utf-8")
    print(f"wrote {RESULTS_JSON} and {RESULTS_MD}", flush=True)
    return 0 if all_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
