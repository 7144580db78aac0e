"""Benchmark: the size of a policy's doors value with 1, 10 and 100 doors, and the time to render and sign it
(in-process), beside the NodePort value of the same policy (which doors never change)."""

from __future__ import annotations

import time
from pathlib import Path

from bench.stats import Figure, Floor, Target, ratios, summarize
from contract.annotation import MAX_ANNOTATION_BYTES, NODEPORTS_KEY, CidrRule, Door, NodePortEntry, PolicyRef, SourceSet
from contract.doors import DOORS_KEY, render_all
from contract.signing import Signer

NAME = "doors-size"
DOORS = (1, 10, 100)
RUNS = 15
NOTES = (
    "In one process. A policy allowing 10 CIDRs on every pod of one Service port whose load-balancer "
    "status and externalIPs give it N doors (half IPv4, half IPv6): the bytes of its `nodeport-guard.io/doors` "
    "value, and the time `render_all` takes to encode and sign both pairs, against the NodePort pair alone "
    "(the floor: what the policy cost before doors). Target: the doors value stays under the contract's "
    "256 KiB at 100 doors; the NodePort value is the same bytes with or without doors."
)


def _entries(doors: int) -> tuple[NodePortEntry, ...]:
    allow = SourceSet(False, tuple(CidrRule(f"198.51.{100 + i // 256}.{i % 256}/32") for i in range(10)))
    addresses = tuple(
        Door(f"203.0.113.{i // 2}" if i % 2 == 0 else f"2001:db8:5::{i:x}", "loadBalancer" if i % 3 else "externalIP")
        for i in range(doors)
    )
    return (NodePortEntry(30080, "TCP", "web", 8080, ("IPv4", "IPv6"), "all", allow, doors=addresses),)


def run(workdir: Path) -> list[Figure]:
    signer = Signer.from_seed(b"bench-doors-size-key-00000000001")
    ref = PolicyRef("shop", "allow-office", "5f0c2d4e-0000-4000-8000-000000000001")
    figures = []
    plain = render_all(ref, (NodePortEntry(**{**{f: getattr(_entries(1)[0], f) for f in NodePortEntry.__slots__},
                                             "doors": ()}),), "enforce", signer)
    for n in DOORS:
        entries = _entries(n)
        both = render_all(ref, entries, "enforce", signer)
        assert both[NODEPORTS_KEY] == plain[NODEPORTS_KEY], "doors must never change the NodePort value"
        size = len(both[DOORS_KEY])
        figures.append(Figure(
            NAME, f"doors value with {n} doors", "bytes", summarize([float(size)]),
            Target("max", "<=", float(MAX_ANNOTATION_BYTES), f"<= {MAX_ANNOTATION_BYTES} bytes (256 KiB)"),
            inputs={"doors": n, "cidrs": 10, "nodeports_value_bytes": len(plain[NODEPORTS_KEY])},
        ))
        ours, floor = [], []
        for _ in range(RUNS):  # interleaved, so that load on the machine hits both alike
            start = time.perf_counter()
            render_all(ref, entries, "enforce", signer)
            ours.append((time.perf_counter() - start) * 1e3)
            start = time.perf_counter()
            render_all(ref, (NodePortEntry(**{**{f: getattr(entries[0], f) for f in NodePortEntry.__slots__},
                                             "doors": ()}),), "enforce", signer)
            floor.append((time.perf_counter() - start) * 1e3)
        figures.append(Figure(
            NAME, f"render and sign both pairs with {n} doors", "ms", summarize(ours),
            Target("median", "<=", 5.0, "median <= 5 ms"),
            Floor("the NodePort pair alone (no doors)", summarize(floor), summarize(ratios(ours, floor))),
            inputs={"doors": n, "runs": RUNS},
        ))
    return figures
