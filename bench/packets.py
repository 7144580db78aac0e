"""Benchmark 6: new-connection rate to a protected NodePort with 10 vs 10,000 protected ports (I/O)."""

from __future__ import annotations

import ipaddress
import logging
import sys
from pathlib import Path

from bench import data
from bench.enforcer_worker import run_in_node
from bench.stats import Figure, Floor, Target, not_measured, ratios, summarize
from enforcer.plan import DesiredState, Network, PortKey, encode_state
from tests import netns
from tests.netns import CLIENT_A4, CLIENT_B4, NODE_V4, Node, make_node

logger = logging.getLogger(__name__)

NAME = "packets"
PORT = 30000
FEW, MANY = 10, 10_000
RUNS = 5
SECONDS = 3.0
NODEPORT_RANGE = (30000, 40999)
# The client (198.51.100.10) is allowed; 203.0.113.10 is not (checked before every measurement).
ALLOWED = ("192.0.2.0/30", "198.51.100.0/28", "203.0.113.128/28")
TARGET = Target("ratio", ">=", 0.8, "ratio >= 0.8 (10,000 ports / 10 ports)")
NOTES = (
    f"A node, client and remote namespace (tests/netns.py). A TCP listener in the node namespace accepts, "
    f"sends 2 bytes and closes; a client process in the client namespace opens new connections to "
    f"{NODE_V4[0]}:{PORT} in a tight loop for {SECONDS:.0f} s (connect, read, close with RST so no TIME_WAIT "
    f"piles up) and counts them. The port is protected and the client's source allowed; the dataplane is "
    f"programmed alternately with {FEW} and with {MANY:,} protected NodePorts (3 prefixes each, legacy "
    f"backend, NodePort range {NODEPORT_RANGE[0]}-{NODEPORT_RANGE[1]}), {RUNS} runs each, and before every "
    "window a connection from a denied source must time out (the filter is in place). Every new "
    "connection walks PREROUTING -> NPG-INGRESS (bitmap:port lookup) -> NPG-CHECK (hash:net,port lookup), "
    "so the rate should not depend on the number of protected ports. The rate includes Python on both "
    "ends (the same in both configurations)."
)

_CLIENT = r"""
import socket, struct, sys, time
dst, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
linger = struct.pack("ii", 1, 0)
count = failed = 0
end = time.perf_counter() + seconds
while time.perf_counter() < end:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    s.settimeout(1.0)
    try:
        s.connect((dst, port))
        if s.recv(2) == b"ok":
            count += 1
        else:
            failed += 1
    except OSError:
        failed += 1
    finally:
        s.close()
print(count, failed)
"""


def expected_figures() -> list[Figure]:
    return [not_measured(NAME, f"new connections/s with {MANY:,} protected NodePorts", "conn/s", TARGET, "")]


def _state(ports: int) -> DesiredState:
    mapping: dict[PortKey, list[Network]] = dict(data.protected_state(ports).as_dict())  # type: ignore[arg-type]
    mapping[PortKey(4, "TCP", PORT)] = [ipaddress.ip_network(c) for c in ALLOWED]
    return DesiredState.from_mapping(mapping)


def _program(node: Node, state_file: Path) -> None:
    run_in_node(node.node_ns, node.lock_path, "program", "legacy", NODEPORT_RANGE, "--state-json", str(state_file))


def _rate(node: Node) -> float:
    if node.connect(CLIENT_B4, NODE_V4[0], PORT, timeout=0.5) != "timeout":
        raise RuntimeError(f"a connection from the denied source {CLIENT_B4} was not dropped: the filter is not active")
    out = netns.run(
        ["ip", "netns", "exec", node.client_ns, sys.executable, "-c", _CLIENT, NODE_V4[0], str(PORT), str(SECONDS)],
        timeout=SECONDS + 60,
    ).stdout.split()
    count, failed = int(out[0]), int(out[1])
    if failed or not count:
        raise RuntimeError(f"{failed} of {count + failed} connections from the allowed client {CLIENT_A4} failed")
    return count / SECONDS


def run(workdir: Path) -> list[Figure]:
    files = {}
    for n in (FEW, MANY):
        files[n] = workdir / f"state-{n}.json"
        files[n].write_text(encode_state(_state(n)), encoding="utf-8")
    rates: dict[int, list[float]] = {FEW: [], MANY: []}
    with make_node(lock_path=str(workdir / "xtables.lock")) as node:
        node.listen(PORT)
        for i in range(RUNS):
            for n in (FEW, MANY) if i % 2 == 0 else (MANY, FEW):
                _program(node, files[n])
                rates[n].append(_rate(node))
        run_in_node(node.node_ns, node.lock_path, "cleanup", "legacy", NODEPORT_RANGE)
    return [
        Figure(
            NAME,
            f"new connections/s with {MANY:,} protected NodePorts",
            "conn/s",
            summarize(rates[MANY]),
            TARGET,
            Floor(
                f"the same with {FEW} protected NodePorts",
                summarize(rates[FEW]),
                summarize(ratios(rates[MANY], rates[FEW])),
            ),
            inputs={"backend": "legacy", "window_seconds": SECONDS, "runs": RUNS, "cidrs_per_port": 3, "port": PORT},
        )
    ]
