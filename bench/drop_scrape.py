"""Benchmark: the cost of one /metrics scrape of the drop counters at 1 to 10,000 protected NodePorts (I/O).

Runs `python -m bench.drop_scrape worker` inside a node namespace (ipset and iptables are per
namespace); the worker programs the dataplane, fills the counter sets and times the reads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import generate_latest

from bench import data
from bench.stats import Figure, Target, not_measured, summarize
from enforcer import diff
from enforcer.dataplane import Dataplane
from enforcer.drops import DropReader
from enforcer.loop import EnforcerMetrics
from enforcer.plan import DesiredState
from tests.netns import NODE_V4, make_node

NAME = "drop-scrape"
SIZES = (1, 100, 1_000, 10_000)
BACKENDS = ("legacy", "nft")
READS = 21
NODEPORT_RANGE = (30000, 40999)
TARGET = Target("median", "<=", 5.0, "median <= 5 ms")
NOTES = (
    f"A node namespace (tests/netns.py) programmed by the real Dataplane with N protected IPv4 NodePorts "
    f"(N = {', '.join(f'{n:,}' for n in SIZES)}; TCP, UDP and SCTP in turn, 3 prefixes each, every other port in "
    f"audit mode), on each backend. Figure: one scrape of nodeport_guard_dropped_packets_total as the enforcer "
    f"serves it: `ipset list -n`, one `ipset restore` printing the counter sets only, parsing, folding into the "
    f"monotonic totals, and prometheus_client's text exposition of the whole enforcer registry; median of {READS} "
    f"scrapes. The counter sets are sparse (a member per node address and port that saw a denied connection), so "
    f"the cost follows the ports that were hit: 'no port hit' is the steady state of a cluster whose clients "
    f"respect the policies; 'every port hit' is the worst case (each of the N ports has seen a dropped or audited "
    f"connection since its sets were created), made by writing the members the kernel would write "
    f"(`add npg-4-dropped {NODE_V4[0]},tcp:PORT packets 5 bytes 300`) instead of sending 10,000 connections; "
    f"tests/dataplane/test_audit.py proves with real packets that the kernel writes exactly these. The allow and "
    f"port sets (3 x N and N members) are never dumped by a scrape."
)


def _figure_name(ports: int, hit: str, backend: str) -> str:
    return f"scrape cost, {ports:,} protected NodePorts, {hit}, {backend}"


def expected_figures() -> list[Figure]:
    return [
        not_measured(NAME, _figure_name(n, hit, b), "ms", TARGET if hit == "no port hit" else None, "")
        for b in BACKENDS
        for n in SIZES
        for hit in ("no port hit", "every port hit")
    ]


def _state(ports: int) -> DesiredState:
    base = data.protected_state(ports, protocols=("TCP", "UDP", "SCTP"))
    return DesiredState(
        tuple(dataclasses.replace(p, mode="audit" if i % 2 else "enforce") for i, p in enumerate(base.ports))
    )


def _hit_every_port(dp: Dataplane, state: DesiredState) -> None:
    lines = []
    for p in state.ports:
        name = diff.counter_set_name(4, p.mode)
        lines.append(f"add {name} {NODE_V4[0]},{p.key.protocol.lower()}:{p.key.port} packets 5 bytes 300\n")
    result = dp._run(["ipset", "restore", "-exist"], "".join(lines))
    if result.returncode != 0:
        raise RuntimeError(f"filling the counter sets failed: {result.stderr.strip()[:500]}")


def worker(backend: str, ports: int, lock_path: str) -> dict[str, object]:
    """Inside the node namespace: program, time READS scrapes with no port hit, then with every port hit."""
    dp = Dataplane(backend, NODEPORT_RANGE, lock_path=lock_path)  # type: ignore[arg-type]
    state = _state(ports)
    dp.sync(state)
    out: dict[str, object] = {}
    try:
        for hit in ("none", "all"):
            if hit == "all":
                _hit_every_port(dp, state)
            reader = DropReader(dp.read_counters)
            metrics = EnforcerMetrics()
            metrics.watch_drops(reader)
            times, samples = [], 0
            for _ in range(READS):
                started = time.perf_counter()
                body = generate_latest(metrics.registry)
                times.append((time.perf_counter() - started) * 1000)
                samples = body.count(b"\nnodeport_guard_dropped_packets_total{")
            expected = 0 if hit == "none" else ports
            if samples != expected:
                raise RuntimeError(f"{hit}: the scrape showed {samples} counters, expected {expected}")
            out[hit] = {"ms": times, "kernel_read_ms": reader.last_seconds * 1000, "samples": samples}
    finally:
        dp.cleanup()
    return out


def run(workdir: Path) -> list[Figure]:
    figures: list[Figure] = []
    with make_node(lock_path=str(workdir / "xtables.lock")) as node:
        for backend in BACKENDS:
            for ports in SIZES:
                proc = subprocess.run(
                    ["ip", "netns", "exec", node.node_ns, sys.executable, "-m", "bench.drop_scrape", "worker",
                     "--backend", backend, "--ports", str(ports), "--lock-path", node.lock_path],
                    capture_output=True, text=True, check=False, timeout=600,
                )
                if proc.returncode != 0:
                    raise RuntimeError(f"drop_scrape worker exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
                answer = json.loads(proc.stdout.strip().splitlines()[-1])
                for hit, label in (("none", "no port hit"), ("all", "every port hit")):
                    measured = answer[hit]
                    figures.append(
                        Figure(
                            NAME, _figure_name(ports, label, backend), "ms", summarize(measured["ms"]),
                            TARGET if hit == "none" else None,
                            inputs={
                                "backend": backend,
                                "protected_nodeports": ports,
                                "counters_exposed": measured["samples"],
                                "last_kernel_read_ms": round(measured["kernel_read_ms"], 2),
                                "scrapes": READS,
                            },
                        )
                    )
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.drop_scrape")
    parser.add_argument("command", choices=["worker"])
    parser.add_argument("--backend", choices=BACKENDS, required=True)
    parser.add_argument("--ports", type=int, required=True)
    parser.add_argument("--lock-path", required=True)
    args = parser.parse_args(argv)
    print(json.dumps(worker(args.backend, args.ports, args.lock_path)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
