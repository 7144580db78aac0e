"""Benchmark: the canary's packets, modelled from the rotation itself (in-process), and the cost of choosing peers.

For 10, 100 and 1,000 nodes every node's peers are computed with the real `canary_targets`: the SYNs one
node sends per second, the most any node receives, and cluster-wide. At 5,000 nodes the choice is timed
on a sample of nodes and the rates follow from the ring (every node sends k and receives k per period,
which the unit test checks exhaustively up to 1,000 nodes).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from bench.stats import Figure, Target, summarize
from contract.path_status import canary_targets
from enforcer.canary import DEFAULT_PEERS, DEFAULT_PERIOD_SECONDS

NAME = "canary"
NOTES = (
    "In one process, from the real peer choice (contract.path_status.canary_targets, k = 2, period 10 s): "
    "SYNs per node per second sent and received (the most any node receives), and cluster-wide; at 5,000 "
    "nodes from the ring's property (k sent and k received per node per period). One probe is one SYN "
    "(dropped where all is well; a SYN-ACK or reset comes back only from a bypassed node). The per-node "
    "CPU to choose its peers once per period is timed. Not yet checked against the local cluster's counters."
)


def _rates(n: int) -> tuple[float, float, float]:
    nodes = [f"node-{i:05d}" for i in range(n)]
    received: Counter[str] = Counter()
    sent = 0
    for me in nodes:
        targets = canary_targets(me, nodes, epoch=1, k=DEFAULT_PEERS)
        sent = max(sent, len(targets))
        received.update(targets)
    period = DEFAULT_PERIOD_SECONDS
    return sent / period, max(received.values()) / period, sum(received.values()) / period


def run(workdir: Path) -> list[Figure]:
    figures = []
    for n in (10, 100, 1_000):
        per_node, most_received, cluster = _rates(n)
        figures.append(Figure(NAME, f"canary SYNs/s cluster-wide at {n:,} nodes", "SYNs/s", summarize([cluster]),
                              Target("max", "<=", n * DEFAULT_PEERS / DEFAULT_PERIOD_SECONDS, "k·N/period"),
                              inputs={"nodes": n, "sent_per_node_per_s": per_node,
                                      "most_received_per_node_per_s": most_received}))
    nodes = [f"node-{i:05d}" for i in range(5_000)]
    samples = []
    for me in nodes[:20]:
        started = time.perf_counter()
        canary_targets(me, nodes, epoch=1, k=DEFAULT_PEERS)
        samples.append((time.perf_counter() - started) * 1000)
    figures.append(Figure(NAME, "canary SYNs/s cluster-wide at 5,000 nodes (from the ring)", "SYNs/s",
                          summarize([5_000 * DEFAULT_PEERS / DEFAULT_PERIOD_SECONDS]),
                          Target("max", "<=", 1_000.0, "k·N/period"), inputs={"nodes": 5_000}))
    figures.append(Figure(NAME, "choosing a node's peers at 5,000 nodes (once per period)", "ms",
                          summarize(samples), Target("median", "<=", 100.0, "1% of a core at one per 10 s"),
                          inputs={"nodes": 5_000}))
    return figures
