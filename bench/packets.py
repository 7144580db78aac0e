"""Benchmark 6: new TCP connections and SCTP INITs per second to a protected NodePort, 10 vs 10,000 ports (I/O)."""

from __future__ import annotations

import ipaddress
import logging
import subprocess
import sys
from pathlib import Path

from bench import data
from bench.enforcer_worker import run_in_node
from bench.stats import Figure, Floor, Target, not_measured, ratios, summarize
from contract.annotation import Mode, Protocol
from enforcer.plan import DesiredState, Network, PortKey, encode_state
from tests import netns
from tests.netns import CLIENT_A4, CLIENT_B4, NODE_V4, Node, make_node
from tests.sctp import build_init

logger = logging.getLogger(__name__)

NAME = "packets"
PORT = 30000  # TCP, the 1st port of the state
SCTP_PORT = 30002  # SCTP, the 3rd port of the state (the ports cycle TCP, UDP, SCTP)
PROTOCOLS: tuple[Protocol, ...] = ("TCP", "UDP", "SCTP")
FEW, MANY = 10, 10_000
RUNS = 5
SECONDS = 3.0
NODEPORT_RANGE = (30000, 40999)
# The client (198.51.100.10) is allowed; 203.0.113.10 is not (checked before every measurement).
ALLOWED = ("192.0.2.0/30", "198.51.100.0/28", "203.0.113.128/28")
TARGET = Target("ratio", ">=", 0.8, "ratio >= 0.8 (10,000 ports / 10 ports)")
NOTES = (
    f"A node, client and remote namespace (tests/netns.py). The dataplane is programmed alternately with "
    f"{FEW} and with {MANY:,} protected NodePorts, the protocols in the mix (port i is TCP, UDP, SCTP for i mod 3 "
    f"= 0, 1, 2: {MANY:,} ports are 3,334 TCP, 3,333 UDP and 3,333 SCTP), 3 prefixes each, every 4th port in "
    f"audit mode (the measured ports are enforced), legacy backend, "
    f"NodePort range {NODEPORT_RANGE[0]}-{NODEPORT_RANGE[1]}; {RUNS} runs each. Before every window a connection "
    f"(TCP) or an INIT (SCTP) from a denied source must be dropped (the filter is in place). "
    f"TCP: a listener in the node namespace accepts, sends 2 bytes and closes; a client process opens new "
    f"connections to {NODE_V4[0]}:{PORT} in a tight loop for {SECONDS:.0f} s (connect, read, close with RST so no "
    f"TIME_WAIT piles up) and counts them. SCTP (no SCTP sockets in this kernel): the client sends the same INIT "
    f"(correct CRC32c) to {NODE_V4[0]}:{SCTP_PORT} from a raw socket in a tight loop; the node never answers, so "
    f"conntrack sees no reply and every copy is NEW and walks the filter; a raw socket (protocol 132) in the node "
    f"namespace counts the INITs that arrive during {SECONDS:.0f} s. Every new TCP connection walks PREROUTING -> "
    f"NPG-INGRESS (bitmap:port lookup) -> NPG-CHECK (hash:net,port lookup, then RETURN: an allowed connection "
    f"never reaches the audit set or the drop counters); every SCTP INIT the SCTP rule of "
    f"NPG-INGRESS (hash:net,port lookup, matched dst,dst) -> NPG-CHECK; so neither rate should depend on the "
    f"number of protected ports. The rates include Python on both ends (the same in both configurations)."
)
TCP_FIGURE = f"new connections/s with {MANY:,} protected NodePorts"
SCTP_FIGURE = f"SCTP INITs/s with {MANY:,} protected NodePorts (SCTP in the mix)"

_SCTP_SENDER = r"""
import socket, sys, time
src, dst, packet, seconds = sys.argv[1], sys.argv[2], bytes.fromhex(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 132)
s.bind((src, 0))
sent = 0
end = time.perf_counter() + seconds
while time.perf_counter() < end:
    for _ in range(64):
        s.sendto(packet, (dst, 0))
    sent += 64
print(sent)
"""

# Counts INITs to PORT for SECONDS from the first one (0 if none comes within FIRST_WAIT seconds).
_SCTP_SINK = r"""
import socket, sys, time
port, seconds, first_wait = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 132)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
s.settimeout(first_wait)
print("ready", flush=True)
count, end = 0, None
while end is None or time.perf_counter() < end:
    try:
        data = s.recv(2048)
    except TimeoutError:
        break
    offset = (data[0] & 15) * 4
    if int.from_bytes(data[offset + 2 : offset + 4], "big") == port:
        count += 1
        if end is None:
            end = time.perf_counter() + seconds
            s.settimeout(0.5)
print(count, flush=True)
"""

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
    return [not_measured(NAME, f, unit, TARGET, "") for f, unit in ((TCP_FIGURE, "conn/s"), (SCTP_FIGURE, "INIT/s"))]


def _state(ports: int) -> DesiredState:
    base = data.protected_state(ports, protocols=PROTOCOLS).as_dict()
    mapping: dict[PortKey, list[Network]] = {k: list(v) for k, v in base.items()}
    for key in (PortKey(4, "TCP", PORT), PortKey(4, "SCTP", SCTP_PORT)):
        if key not in mapping:
            raise AssertionError(f"{key} is not in the benchmark state: the protocol mix changed")
        mapping[key] = [ipaddress.ip_network(c) for c in ALLOWED]
    # Every 4th port in audit mode, so the audit set is as large as it gets in practice; the
    # measured ports stay enforced (their denied probe must be dropped).
    modes: dict[PortKey, Mode] = {
        k: "audit" for i, k in enumerate(sorted(mapping)) if i % 4 == 3 and k.port not in (PORT, SCTP_PORT)
    }
    return DesiredState.from_mapping(mapping, modes)


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


def _sctp_window(node: Node, src: str, seconds: float, first_wait: float) -> int:
    """INITs from `src` that reached the node during `seconds` (sent in a tight loop for a little longer)."""
    sink = subprocess.Popen(
        ["ip", "netns", "exec", node.node_ns, sys.executable, "-c", _SCTP_SINK, str(SCTP_PORT), str(seconds),
         str(first_wait)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert sink.stdout is not None
        if sink.stdout.readline().strip() != "ready":
            raise RuntimeError("the SCTP sink did not start")
        packet = build_init(40000, SCTP_PORT, 0x5C7B0001).hex()
        netns.run(
            ["ip", "netns", "exec", node.client_ns, sys.executable, "-c", _SCTP_SENDER, src, NODE_V4[0], packet,
             str(seconds + first_wait)],
            timeout=seconds + 60,
        )
        return int(sink.communicate(timeout=seconds + 30)[0].strip() or 0)
    finally:
        if sink.poll() is None:
            sink.kill()
            sink.wait()


def _sctp_rate(node: Node) -> float:
    node.run(["conntrack", "-F"], check=False)
    if _sctp_window(node, CLIENT_B4, 0.2, 1.0):
        raise RuntimeError(f"an SCTP INIT from the denied source {CLIENT_B4} arrived: the filter is not active")
    count = _sctp_window(node, CLIENT_A4, SECONDS, 2.0)
    if not count:
        raise RuntimeError(f"no SCTP INIT from the allowed client {CLIENT_A4} arrived")
    return count / SECONDS


def run(workdir: Path) -> list[Figure]:
    files = {}
    for n in (FEW, MANY):
        files[n] = workdir / f"state-{n}.json"
        files[n].write_text(encode_state(_state(n)), encoding="utf-8")
    rates: dict[int, list[float]] = {FEW: [], MANY: []}
    sctp: dict[int, list[float]] = {FEW: [], MANY: []}
    with make_node(lock_path=str(workdir / "xtables.lock")) as node:
        node.listen(PORT)
        for i in range(RUNS):
            for n in (FEW, MANY) if i % 2 == 0 else (MANY, FEW):
                _program(node, files[n])
                rates[n].append(_rate(node))
                sctp[n].append(_sctp_rate(node))
        run_in_node(node.node_ns, node.lock_path, "cleanup", "legacy", NODEPORT_RANGE)
    inputs: dict[str, str | int | float | None] = {
        "backend": "legacy", "window_seconds": SECONDS, "runs": RUNS, "cidrs_per_port": 3,
        "protocol_mix": "TCP, UDP, SCTP (port i: i mod 3)",
    }
    return [
        Figure(
            NAME, TCP_FIGURE, "conn/s", summarize(rates[MANY]), TARGET,
            Floor(f"the same with {FEW} protected NodePorts", summarize(rates[FEW]),
                  summarize(ratios(rates[MANY], rates[FEW]))),
            inputs={**inputs, "port": PORT},
        ),
        Figure(
            NAME, SCTP_FIGURE, "INIT/s", summarize(sctp[MANY]), TARGET,
            Floor(f"the same with {FEW} protected NodePorts", summarize(sctp[FEW]),
                  summarize(ratios(sctp[MANY], sctp[FEW]))),
            inputs={**inputs, "port": SCTP_PORT},
        ),
    ]
