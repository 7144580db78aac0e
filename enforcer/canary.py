"""The active canary: connect to a few peers' canary NodePort from the host network, rotating (I/O).

The canary NodePort (manifests/canary/) has an answering backend and a deny-all NetworkPolicy, signed
like any other: where our filter is in the path, a probe times out; where it is not, the backend (or
kube-proxy's reject) answers. An answer (a SYN-ACK or a reset) proves the peer is not filtering; a
timeout counts as filtering; anything else is an error (unverified, never enforcing). Which peers,
and what the results mean for a node, is pure: contract/path_status.py.

A probe leaves this node through OUTPUT and its answer comes back as an established flow, so our own
PREROUTING filter never sees it as new; the canary port is left out of the drop metrics.
"""

from __future__ import annotations

import datetime
import logging
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from contract.path_status import MAX_PROBES, Probe, ProbeResult, canary_targets
from kube.listwatch import EventType, ObjectSink

logger = logging.getLogger(__name__)

ROTATION_SECONDS = 600  # the probers of a node change every 10 minutes (one Lease write per node then)
DEFAULT_PERIOD_SECONDS = 10.0
DEFAULT_PEERS = 2
DEFAULT_TIMEOUT_SECONDS = 1.0

ProbeFn = Callable[[str, int, float], tuple[ProbeResult, str]]


def probe_nodeport(address: str, port: int, timeout: float) -> tuple[ProbeResult, str]:
    """One TCP connection attempt to address:port (I/O): answered, filtering (timeout) or error."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    target = f"[{address}]:{port}" if family == socket.AF_INET6 else f"{address}:{port}"
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((address, port))
        return "answered", f"SYN-ACK from {target}: the connection was accepted"
    except ConnectionRefusedError:
        return "answered", f"reset or port unreachable from {target}: the SYN got past the filter"
    except TimeoutError:
        return "filtering", f"timeout after {timeout:g}s connecting to {target}"
    except OSError as exc:
        return "error", f"{exc.strerror or exc} connecting to {target}"
    finally:
        sock.close()


def node_addresses(nodes: list[dict[str, Any]]) -> dict[str, str]:
    """Pure: node name -> its first InternalIP (nodes without one are left out: they cannot be probed)."""
    out = {}
    for node in nodes:
        name = (node.get("metadata") or {}).get("name", "")
        for address in (node.get("status") or {}).get("addresses") or []:
            if address.get("type") == "InternalIP" and address.get("address"):
                out[name] = str(address["address"])
                break
    return out


class CanaryProber:
    """Each period, probes this node's `k` peers of the current rotation epoch and keeps the latest result per peer.

    `nodes` returns every node's name and probe address (the Node watch); `armed` returns None when this
    node has programmed the canary's deny-all (so a peer lagging by more than that is the only false
    alarm left), or why not: then every probe is recorded as an error, never as a verdict.
    """

    def __init__(
        self,
        me: str,
        port: int,
        nodes: Callable[[], Mapping[str, str]],
        armed: Callable[[], str | None],
        period: float = DEFAULT_PERIOD_SECONDS,
        peers: int = DEFAULT_PEERS,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        probe: ProbeFn = probe_nodeport,
        wall: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC),
        on_result: Callable[[Probe, Probe | None], None] | None = None,
    ) -> None:
        self.me, self.port, self._nodes, self._armed = me, port, nodes, armed
        self.period, self.peers, self.timeout = period, peers, timeout
        self._probe, self._wall, self._on_result = probe, wall, on_result
        self._lock = threading.Lock()
        self._latest: dict[str, Probe] = {}
        self._targets: tuple[str, ...] = ()

    def targets(self) -> tuple[str, ...]:
        epoch = int(self._wall().timestamp() // ROTATION_SECONDS)
        return canary_targets(self.me, sorted(self._nodes()), epoch, self.peers)

    def round(self) -> list[Probe]:
        """Probe this epoch's peers once; returns the new probes."""
        addresses = self._nodes()
        targets = self.targets()
        not_armed = self._armed()
        done = []
        for target in targets:
            address = addresses.get(target)
            if not_armed is not None:
                result: ProbeResult = "error"
                detail = not_armed
            elif address is None:
                result, detail = "error", f"node {target} has no InternalIP address to probe"
            else:
                result, detail = self._probe(address, self.port, self.timeout)
            probe = Probe(target, result, detail, self._wall())
            with self._lock:
                before = self._latest.get(target)
                self._latest[target] = probe
            if self._on_result is not None:
                self._on_result(probe, before)
            done.append(probe)
        with self._lock:
            self._targets = targets
            # Only this epoch's peers are reported: the Lease stays bounded and says what is current.
            self._latest = {t: p for t, p in self._latest.items() if t in targets}
        return done

    def report(self) -> tuple[Probe, ...]:
        with self._lock:
            return tuple(self._latest[t] for t in self._targets if t in self._latest)[:MAX_PROBES]

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.round()
            except Exception as exc:  # the canary is a check: a failure leaves peers unverified, never enforcing
                logger.warning("canary round failed", extra={"error": str(exc)[:300]})
            stop.wait(max(0.0, self.period - (time.monotonic() - started)))

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="canary", daemon=True)
        thread.start()
        return thread


PortsView = Callable[[], Mapping[tuple[int, str, int], tuple[int, str]] | None]


def canary_armed(state_ports: PortsView, port: int) -> str | None:
    """None when the canary port is enforced here with no source allowed (IPv4 TCP), else why not.

    `state_ports` returns (family, protocol, port) -> (number of allowed prefixes, mode) of what is
    programmed, or None before the first sync. Pure given that function."""
    ports = state_ports()
    if ports is None:
        return "this node's enforcer has not synced yet"
    entry = ports.get((4, "TCP", port))
    if entry is None:
        return (
            f"the canary NodePort {port} is not protected on the probing node: is the canary NetworkPolicy "
            "(nodeport-guard-canary/nodeport-guard-canary-deny-all) applied and signed? (make deploy applies it)"
        )
    allowed, mode = entry
    if mode != "enforce":
        return f"the canary NodePort {port} is in {mode} mode here: nothing is dropped, so nothing can be verified"
    if allowed:
        return f"the canary NodePort {port} allows {allowed} source prefixes here: its policy must deny every source"
    return None


class NodeAddresses(ObjectSink[dict[str, Any]]):
    """The Node watch's sink: name -> InternalIP, read by the prober each round."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._nodes: dict[str, dict[str, Any]] = {}

    def replace(self, kind: str, objects: list[dict[str, Any]], resource_version: str) -> None:
        with self._lock:
            self._nodes = {o["metadata"]["name"]: o for o in objects}

    def apply(self, kind: str, event: EventType, obj: dict[str, Any]) -> None:
        with self._lock:
            if event == "DELETED":
                self._nodes.pop(obj["metadata"]["name"], None)
            else:
                self._nodes[obj["metadata"]["name"]] = obj

    def __call__(self) -> dict[str, str]:
        with self._lock:
            nodes = list(self._nodes.values())
        return node_addresses(nodes)


def trim_node(obj: dict[str, Any]) -> dict[str, Any]:
    """Only what the prober reads (a Node object is large: images, conditions)."""
    status = obj.get("status") or {}
    return {"metadata": {"name": obj["metadata"]["name"]}, "status": {"addresses": status.get("addresses") or []}}


def serve_backend(bind: tuple[str, int]) -> None:
    """The canary's backend (I/O): accept every TCP connection, say so, close. Where a probe reaches it,
    the filter was bypassed; it answers so that a bypass shows as an answer, never as a silent drop."""
    import socketserver

    class Answer(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            self.request.sendall(b"nodeport-guard canary: a denied source got through\n")

    with socketserver.ThreadingTCPServer(bind, Answer) as server:
        server.daemon_threads = True
        logger.info("canary backend listening", extra={"bind": f"{bind[0]}:{bind[1]}"})
        server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    """`python -m enforcer.canary --port 8080`: the canary Deployment's backend (light imports only)."""
    import argparse

    from kube.logs import configure_logging

    parser = argparse.ArgumentParser(prog="python -m enforcer.canary", description=serve_backend.__doc__)
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    configure_logging("INFO")
    serve_backend(("0.0.0.0", args.port))  # noqa: S104 - the canary pod's own network namespace
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
