"""Real-packet probes between a node and a client network namespace: topology, agents, probes (I/O).

`probe_pair(node_addresses, client_addresses, ports)` creates a node namespace and a client
namespace joined by one veth (created inside the node namespace, its peer placed straight into the
client namespace: no link ever exists in the root namespace), gives the client every source address
(/32 or /128) and the node its addresses, and starts the agents of `tests.probe_agent` in both.
`Prober.probe()` sends one real packet exchange: a TCP connect, a UDP request/answer, or an SCTP
INIT built on a raw socket and observed on a raw socket in the node namespace; `probe_all()` sends
many in parallel. Everything created is
deleted on exit, even after a failure.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tests.netns import NS_PREFIX, run
from tests.scenarios import ProbeProtocol

REPO = Path(__file__).resolve().parents[1]
# What a probe saw: TCP connected (the server greeted), accepted (handshake done, the server said nothing:
# kube-proxy's health-check server waits for a request), UDP answered, SCTP INIT arrived; refused (a TCP
# reset or an ICMP port unreachable from the node); or nothing (timeout).
Observed = Literal["connected", "accepted", "refused", "answered", "arrived", "timeout"]
# Got through the node's filter. "refused" counts: the node's own stack answered, so the packet passed
# mangle PREROUTING (the node agent listens on every probed port, so it does not happen in the oracle).
PASSED: frozenset[str] = frozenset({"connected", "accepted", "answered", "arrived", "refused"})


def _spawn(enter: Sequence[str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*enter, sys.executable, "-m", "tests.probe_agent", *args],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


class _Agent:
    """One agent process and a reader thread that hands its JSON lines to `_on_line`."""

    def __init__(self, netns: str, *args: str, enter: Sequence[str] | None = None) -> None:
        """`netns` names where it runs; `enter` is the argv prefix that gets there (default `ip netns exec`)."""
        self.netns = netns
        self._proc = _spawn(enter if enter is not None else ["ip", "netns", "exec", netns], *args)
        self._cond = threading.Condition()
        assert self._proc.stdout is not None
        first = self._proc.stdout.readline()
        if not first or not json.loads(first).get("ready"):
            self.close()
            raise RuntimeError(f"probe agent {args[0]} in {netns} did not start")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            with self._cond:
                self._on_line(json.loads(line))
                self._cond.notify_all()

    def _on_line(self, message: dict[str, Any]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        self._proc.wait(timeout=10)
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


class NodeAgent(_Agent):
    """Listeners on the node (TCP accept, UDP echo on `ports`) and the record of SCTP INITs that arrived."""

    def __init__(self, netns: str, ports: Sequence[int], enter: Sequence[str] | None = None) -> None:
        self._sctp: dict[tuple[int, int], tuple[str, bool]] = {}  # (port, tag) -> (source, checksum ok)
        super().__init__(netns, "node", *(str(p) for p in sorted(set(ports))), enter=enter)

    def _on_line(self, message: dict[str, Any]) -> None:
        if "sctp" in message:
            source, port, tag, ok = message["sctp"]
            self._sctp[(int(port), int(tag))] = (str(source), bool(ok))

    def sctp_arrived(self, source: str, port: int, tag: int, timeout: float) -> bool:
        """Whether the INIT with this tag reached a raw socket on the node within `timeout` seconds."""
        with self._cond:
            self._cond.wait_for(lambda: (port, tag) in self._sctp, timeout)
            seen = self._sctp.pop((port, tag), None)
        if seen is None:
            return False
        if ipaddress.ip_address(seen[0]) != ipaddress.ip_address(source) or not seen[1]:
            raise AssertionError(
                f"SCTP INIT tag {tag} arrived from {seen[0]} (checksum ok: {seen[1]}), sent from {source}"
            )
        return True

    def take_init(self, tag: int) -> tuple[str, int, bool] | None:
        """The INIT with this tag if it arrived, whatever its port and source (NAT may change both):
        (source, destination port, checksum ok). Does not wait."""
        with self._cond:
            key = next((k for k in self._sctp if k[1] == tag), None)
            if key is None:
                return None
            source, ok = self._sctp.pop(key)
        return source, key[0], ok


class ClientAgent(_Agent):
    """Sends probes from any of the client namespace's addresses; many may be in flight at once."""

    def __init__(self, netns: str) -> None:
        self._answers: dict[int, str] = {}
        self._lock = threading.Lock()
        self._next = 0
        super().__init__(netns, "client")

    def _on_line(self, message: dict[str, Any]) -> None:
        self._answers[int(message["id"])] = str(message["result"])

    def request(self, proto: ProbeProtocol, src: str, dst: str, port: int, timeout: float, tag: int = 0) -> str:
        with self._lock:
            self._next += 1
            ident = self._next
            assert self._proc.stdin is not None
            line = {"id": ident, "proto": proto, "src": src, "dst": dst, "port": port, "timeout": timeout, "tag": tag}
            self._proc.stdin.write(json.dumps(line) + "\n")
            self._proc.stdin.flush()
        with self._cond:
            if not self._cond.wait_for(lambda: ident in self._answers, timeout + 30):
                raise RuntimeError(f"client agent in {self.netns} did not answer probe {line}")
            return self._answers.pop(ident)


@dataclass(frozen=True, slots=True)
class Probe:
    proto: ProbeProtocol
    src: str
    dst: str
    port: int


class Prober:
    """Sends probes through a client agent and judges SCTP arrivals through a node agent."""

    def __init__(self, node_ns: str, client_ns: str, ports: Sequence[int]) -> None:
        self.node = NodeAgent(node_ns, ports)
        try:
            self.client = ClientAgent(client_ns)
        except BaseException:
            self.node.close()
            raise
        self._pool = ThreadPoolExecutor(max_workers=16)

    def probe(self, probe: Probe, timeout: float = 1.0) -> Observed:
        """One real exchange from `probe.src` (a client address) to `probe.dst:probe.port` on the node."""
        if probe.proto == "sctp":
            tag = 1 + secrets.randbelow((1 << 32) - 1)
            sent = self.client.request("sctp", probe.src, probe.dst, probe.port, timeout, tag)
            if sent != "sent":
                raise RuntimeError(f"{probe}: the client could not send the INIT: {sent}")
            return "arrived" if self.node.sctp_arrived(probe.src, probe.port, tag, timeout) else "timeout"
        result = self.client.request(probe.proto, probe.src, probe.dst, probe.port, timeout)
        if result not in ("connected", "accepted", "refused", "answered", "timeout"):
            raise RuntimeError(f"{probe}: {result}")
        return result  # type: ignore[return-value]

    def probe_all(self, probes: Sequence[Probe], timeout: float = 1.0) -> list[Observed]:
        """Probes in parallel (each its own source port, UDP token or SCTP tag, so they never mix)."""
        return list(self._pool.map(lambda p: self.probe(p, timeout), probes))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for agent in (self.client, self.node):
            agent.close()


@dataclass
class ProbePair:
    """A node namespace and a client namespace holding every source address, with their agents."""

    node_ns: str
    client_ns: str
    node_addresses: tuple[str, ...]
    client_addresses: tuple[str, ...]
    prober: Prober | None = None

    def node_address(self, family: int) -> str:
        return next(a for a in self.node_addresses if ipaddress.ip_address(a).version == family)

    def probe_all(self, probes: Sequence[Probe], timeout: float = 1.0) -> list[Observed]:
        assert self.prober is not None
        return self.prober.probe_all(probes, timeout)

    def run(self, argv: Sequence[str], stdin: str | None = None, check: bool = True) -> str:
        """A command inside the node namespace; its standard output."""
        return run(["ip", "netns", "exec", self.node_ns, *argv], stdin, check).stdout

    def flush_conntrack(self) -> None:
        """Forget tracked flows in the node namespace, so every probe is a NEW connection."""
        self.run(["conntrack", "-F"], check=False)

    def close(self) -> None:
        if self.prober is not None:
            self.prober.close()
        for ns in (self.client_ns, self.node_ns):
            for pid in run(["ip", "netns", "pids", ns], check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            run(["ip", "netns", "del", ns], check=False)


def _prefix(address: str) -> str:
    return f"{address}/{32 if ipaddress.ip_address(address).version == 4 else 128}"


@contextlib.contextmanager
def probe_pair(
    node_addresses: Sequence[str], client_addresses: Sequence[str], ports: Sequence[int], name: str = "pp"
) -> Iterator[ProbePair]:
    """Create the two namespaces, the veth, the addresses and routes and both agents; always delete them."""
    clash = set(map(ipaddress.ip_address, node_addresses)) & set(map(ipaddress.ip_address, client_addresses))
    if clash:
        raise ValueError(f"node and client addresses overlap: {sorted(map(str, clash))}")
    tag = secrets.token_hex(3)
    pair = ProbePair(f"{NS_PREFIX}{name}n-{tag}", f"{NS_PREFIX}{name}c-{tag}", tuple(node_addresses),
                     tuple(client_addresses))
    try:
        for ns in (pair.node_ns, pair.client_ns):
            run(["ip", "netns", "add", ns])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            # Per-namespace settings: addresses are usable at once (no duplicate address detection).
            for conf in ("all", "default"):
                run(["ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"net.ipv6.conf.{conf}.accept_dad=0"])
        run(["ip", "-n", pair.node_ns, "link", "add", "to-cli", "type", "veth", "peer", "name", "eth0",
             "netns", pair.client_ns])
        for ns, dev, addresses in ((pair.node_ns, "to-cli", node_addresses), (pair.client_ns, "eth0",
                                                                              client_addresses)):
            for address in addresses:
                run(["ip", "-n", ns, "addr", "add", _prefix(address), "dev", dev, "nodad"])
            run(["ip", "-n", ns, "link", "set", dev, "up"])
            # Every other address is on the other end of the veth (a device route: ARP/ND find it).
            run(["ip", "-n", ns, "-4", "route", "add", "default", "dev", dev])
            run(["ip", "-n", ns, "-6", "route", "add", "default", "dev", dev])
        pair.prober = Prober(pair.node_ns, pair.client_ns, ports)
        yield pair
    finally:
        pair.close()
