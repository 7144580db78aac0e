"""Benchmark: the node status Lease's cost (in-process): one status document at 10,000 protected ports,
and the apiserver writes it adds at 1,000 nodes, computed from the publisher's own per-node rate."""

from __future__ import annotations

import datetime
import gc
import hashlib
import ipaddress
import time
from pathlib import Path

from bench.stats import Figure, Floor, Target, ratios, summarize
from contract.node_status import encode_lease
from enforcer.plan import DesiredState, PortKey, ProtectedPort
from enforcer.status import Programmed, StatusPublisher, node_status

NAME = "node_status"
PORTS = 10_000
RUNS = 15
NODES = 1_000
SIMULATED_SECONDS = 600.0
NOTES = (
    "In one process. The status document is built only when a Lease write is due (at most once per "
    "5 s per node): the verdicts digest over every protected port plus the Lease body, at 10,000 "
    "protected (port, family) entries with one to three prefixes each, timed with `time.perf_counter`; "
    "the floor is one bare SHA-256 over the same prefixes already serialized (what any digest costs). "
    "The write load runs the real publisher against a simulated clock for 10 minutes: a change every "
    "0.1 s (policies changing somewhere all the time), then nothing; writes per node per second times "
    "1,000 nodes. Targets: under 100 ms per document (2% of a core at one write per 5 s) and at most "
    "one write per node per 5 s (200 writes/s at 1,000 nodes)."
)


def build_state() -> DesiredState:
    ports = []
    for i in range(PORTS):
        family = 4 if i % 2 == 0 else 6
        count = 1 + i % 3
        if family == 4:
            nets = [ipaddress.ip_network(f"198.51.{100 + k}.{i % 256}/32") for k in range(count)]
        else:
            nets = [ipaddress.ip_network(f"2001:db8:{k}::{i:x}/128") for k in range(count)]
        ports.append(ProtectedPort(PortKey(family, "TCP", 30000 + i // 2), tuple(nets)))  # type: ignore[arg-type]
    ports.sort(key=lambda p: p.key)
    return DesiredState(tuple(ports))


def _document_samples(state: DesiredState) -> tuple[list[float], list[float]]:
    programmed = Programmed(True, "123456", state, ())
    now = datetime.datetime.now(datetime.UTC)
    serialized = b"".join(n.network_address.packed for p in state.ports for n in p.allowed)
    ours, floor = [], []
    for _ in range(RUNS):  # interleaved, so that load on the machine hits both alike
        start = time.perf_counter()
        encode_lease(node_status("node1", "ready", programmed, now), "nodeport-guard", now, 180)
        ours.append((time.perf_counter() - start) * 1e3)
        start = time.perf_counter()
        hashlib.sha256(serialized).hexdigest()
        floor.append((time.perf_counter() - start) * 1e3)
    return ours, floor


def _writes_per_second(change_every: float | None) -> float:
    """The real publisher, a simulated clock: writes per second of one node."""
    clock = [0.0]
    generation = [0]
    writes: list[object] = []
    state = DesiredState()

    def read() -> Programmed:
        return Programmed(True, str(generation[0]), state, ())

    publisher = StatusPublisher(
        "node1", "nodeport-guard", writes.append, lambda: generation[0], read, clock=lambda: clock[0]
    )
    step, next_change = 0.1, 0.0
    while clock[0] < SIMULATED_SECONDS:
        if change_every is not None and clock[0] >= next_change:
            generation[0] += 1
            next_change += change_every
        publisher.tick()
        clock[0] += step
    return len(writes) / SIMULATED_SECONDS


def run(workdir: Path) -> list[Figure]:
    state = build_state()
    gc.collect()
    ours, floor = _document_samples(state)
    inputs: dict[str, str | int | float | bool | None] = {"protected_entries": len(state.ports), "runs": RUNS}
    figures = [
        Figure(
            NAME,
            "status document (digest + Lease body) at 10,000 protected entries",
            "ms",
            summarize(ours),
            Target("median", "<=", 100.0, "median <= 100 ms"),
            Floor("one SHA-256 over the same prefixes, serialized", summarize(floor), summarize(ratios(ours, floor))),
            inputs=inputs,
        )
    ]
    for label, every in (("a change every 0.1 s", 0.1), ("no change (heartbeat only)", None)):
        rate = _writes_per_second(every) * NODES
        figures.append(
            Figure(
                NAME,
                f"apiserver writes at 1,000 nodes, {label}",
                "writes/s",
                summarize([rate]),
                Target("max", "<=", 200.0, "<= 200 writes/s (one per node per 5 s)"),
                inputs={"nodes": NODES, "simulated_seconds": SIMULATED_SECONDS},
            )
        )
    return figures
