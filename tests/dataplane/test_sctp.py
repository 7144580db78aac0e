"""SCTP NodePorts filtered for real: INITs built on a raw socket, seen (or not) on the node, both backends.

The kernel here has no SCTP sockets, so the client sends an INIT (correct CRC32c) from a raw socket
bound to its source address and the node's raw socket (protocol 132) reports what arrived.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest

from contract.annotation import Protocol
from enforcer import diff
from enforcer.plan import DesiredState, PortKey
from tests.netns import CLIENT_A4, CLIENT_A6, CLIENT_B4, CLIENT_B6, NODE_V4, NODE_V6, NetnsDataplane, Node
from tests.probes import Observed, Probe, Prober

pytestmark = pytest.mark.netns
BACKENDS = pytest.mark.parametrize("backend", ["legacy", "nft"])
PORT = 30132


def state(*entries: tuple[int, Protocol, int, list[str]]) -> DesiredState:
    return DesiredState.from_mapping(
        {PortKey(f, p, port): [ipaddress.ip_network(c) for c in cidrs] for f, p, port, cidrs in entries}  # type: ignore[arg-type]
    )


@pytest.fixture
def prober(node: Node) -> Iterator[Prober]:
    p = Prober(node.node_ns, node.client_ns, [PORT, PORT + 1])
    try:
        yield p
    finally:
        p.close()


def init(prober: Prober, src: str, port: int = PORT) -> Observed:
    dst = NODE_V6[0] if ":" in src else NODE_V4[0]
    return prober.probe(Probe("sctp", src, dst, port))


@BACKENDS
def test_sctp_init_from_an_allowed_source_arrives_and_from_a_denied_source_is_dropped(
    node: Node, prober: Prober, backend: str, tmp_path: Path
) -> None:
    dp = NetnsDataplane(node, backend, tmp_path)
    sources = (CLIENT_A4, CLIENT_B4, CLIENT_A6, CLIENT_B6)
    assert [init(prober, s) for s in sources] == ["arrived"] * 4

    protected = state((4, "SCTP", PORT, ["198.51.100.0/24"]), (6, "SCTP", PORT, ["2001:db8:1::/64"]))
    dp.sync(protected)
    assert dp.installed() == protected
    assert [init(prober, s) for s in sources] == ["arrived", "timeout", "arrived", "timeout"]
    # The protocol and the port are part of the key: TCP on the same number and another SCTP port stay open.
    assert prober.probe(Probe("tcp", CLIENT_B4, NODE_V4[0], PORT)) == "connected"
    assert init(prober, CLIENT_B4, PORT + 1) == "arrived"

    dp.sync(state((4, "SCTP", PORT, [])))
    assert [init(prober, s) for s in sources] == ["timeout", "timeout", "arrived", "arrived"]

    dp.sync(DesiredState())
    assert [init(prober, s) for s in sources] == ["arrived"] * 4


@BACKENDS
def test_a_node_with_the_retired_sctp_bitmap_set_converges(
    node: Node, prober: Prober, backend: str, tmp_path: Path
) -> None:
    """An earlier version put SCTP ports in a bitmap:port set (which never matched): an upgrade removes it."""
    dp = NetnsDataplane(node, backend, tmp_path)
    dp.sync(state((4, "SCTP", PORT, [])))
    retired = diff.retired_set_names(4)[0]
    node.run(["ipset", "create", retired, "bitmap:port", "range", "30000-32767"])
    node.run(["ipset", "add", retired, str(PORT)])
    node.run([f"iptables-{backend}", "-t", "mangle", "-A", diff.INGRESS_CHAIN, "-p", "sctp",
              "-m", "set", "--match-set", retired, "dst", "-j", diff.CHECK_CHAIN])
    report = dp.sync(state((4, "SCTP", PORT, [])))
    assert report["drift_repaired"] is True
    assert retired not in node.run(["ipset", "list", "-n"]).stdout.split()
    assert init(prober, CLIENT_A4) == "timeout"
    assert init(prober, CLIENT_A6) == "arrived"
