"""NFLOG netlink messages from bytes: the packet's source, destination, protocol and port, the mode
from the prefix; the requests we send; truncated and foreign input (pure)."""

from __future__ import annotations

import ipaddress
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from enforcer.nflog import (
    NFULA_CFG_CMD,
    NFULA_CFG_MODE,
    NLMSG_ERROR,
    parse_acks,
    parse_ip_packet,
    parse_nflog,
    render_bind,
    render_packet_message,
)

PROTOS = {"TCP": 6, "UDP": 17, "SCTP": 132}


def ipv4(src: str, dst: str, proto: int, dport: int, options: int = 0, frag: int = 0) -> bytes:
    ihl = 5 + options
    head = struct.pack(">BBHHHBBH4s4s", 0x40 | ihl, 0, 0, 0, frag, 64, proto, 0,
                       ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed)
    return head + b"\x01" * (4 * options) + struct.pack(">HH", 40000, dport) + b"\0" * 16


def ipv6(src: str, dst: str, proto: int, dport: int, ext: int = 0) -> bytes:
    first = 0 if ext else proto
    head = struct.pack(">IHBB16s16s", 0x60000000, 0, first, 64,
                       ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed)
    exts = b""
    for i in range(ext):  # hop-by-hop then destination options, 8 bytes each
        exts += bytes((60 if i + 1 < ext else proto, 0)) + b"\0" * 6
    return head + exts + struct.pack(">HH", 40000, dport) + b"\0" * 16


V4 = st.ip_addresses(v=4).map(str)
V6 = st.ip_addresses(v=6).map(str)


@given(V4, V4, st.sampled_from(sorted(PROTOS)), st.integers(0, 65535), st.integers(0, 10),
       st.sampled_from(["npg-enforce", "npg-audit"]))
@settings(max_examples=200)
def test_ipv4_round_trip(src: str, dst: str, proto: str, port: int, options: int, prefix: str) -> None:
    msg = render_packet_message(prefix, 2, 9911, ipv4(src, dst, PROTOS[proto], port, options))
    samples, skipped = parse_nflog(msg + msg)
    assert skipped == 0
    assert [(s.prefix, s.family, s.source, s.destination, s.protocol, s.port) for s in samples] == [
        (prefix, 4, src, dst, proto, port)] * 2


@given(V6, V6, st.sampled_from(sorted(PROTOS)), st.integers(0, 65535), st.integers(0, 3))
@settings(max_examples=200)
def test_ipv6_round_trip_over_extension_headers(src: str, dst: str, proto: str, port: int, ext: int) -> None:
    (s,), _ = parse_nflog(render_packet_message("npg-audit", 10, 9911, ipv6(src, dst, PROTOS[proto], port, ext)))
    assert (s.family, s.source, s.destination, s.protocol, s.port) == (6, src, dst, proto, port)


def test_what_is_not_a_sample_is_skipped() -> None:
    icmp = ipv4("198.51.100.1", "192.0.2.1", 1, 0)
    fragment = ipv4("198.51.100.1", "192.0.2.1", 6, 80, frag=0x0010)
    short = ipv4("198.51.100.1", "192.0.2.1", 6, 80)[:22]
    msgs = b"".join(render_packet_message("npg-enforce", 2, 1, p) for p in (icmp, fragment, short, b"", b"\x50"))
    assert parse_nflog(msgs) == ([], 5)
    assert parse_ip_packet(ipv6("2001:db8::1", "2001:db8::2", 6, 80)[:41]) is None


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_garbage_never_raises(data: bytes) -> None:
    samples, skipped = parse_nflog(data)
    assert skipped >= 0 and all(0 <= s.port <= 65535 for s in samples)


def test_a_truncated_datagram_yields_what_is_whole() -> None:
    one = render_packet_message("npg-enforce", 2, 1, ipv4("198.51.100.9", "192.0.2.1", 6, 30080))
    samples, _ = parse_nflog(one + one[:-10])
    assert [s.source for s in samples] == ["198.51.100.9"]


def test_bind_request_and_acks() -> None:
    req = render_bind(9911, 128, seq=7)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", req)
    assert (length, kind, flags, seq) == (len(req), (4 << 8) | 1, 0x5, 7)
    assert struct.unpack_from(">H", req, 18)[0] == 9911  # res_id: the group, big-endian
    attrs = req[20:]
    assert struct.unpack_from("=HH", attrs) == (5, NFULA_CFG_CMD)
    assert struct.unpack_from("=HH", attrs, 8) == (10, NFULA_CFG_MODE)
    assert struct.unpack_from(">IB", attrs, 12) == (128, 2)
    ack = struct.pack("=IHHII", 36, NLMSG_ERROR, 0, 7, 0) + struct.pack("=i", -16) + req[:16]
    assert parse_acks(ack + struct.pack("=IHHII", 36, NLMSG_ERROR, 0, 8, 0) + struct.pack("=i", 0) + req[:16]) == {
        7: 16, 8: 0}
