"""NFLOG over netlink, as bytes: the configuration requests we send and the packet messages we read (pure).

The kernel's nfnetlink_log (include/uapi/linux/netfilter/nfnetlink_log.h) sends one netlink
message per logged packet: an `nfgenmsg` (family, version, group) then attributes, of which we
read NFULA_PREFIX (the rule's `--nflog-prefix`, which names the mode) and NFULA_PAYLOAD (the
start of the IP packet: source, destination, protocol, destination port). The socket itself is
`enforcer/nflog_reader.py`.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Literal

NETLINK_NETFILTER = 12
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
# attributes of a packet message
NFULA_PACKET_HDR = 1
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10
# attributes of a config message
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULNL_CFG_CMD_BIND = 1
NFULNL_CFG_CMD_UNBIND = 2
NFULNL_COPY_PACKET = 2
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED / NLA_F_NET_BYTEORDER

_NLMSG = struct.Struct("=IHHII")  # len, type, flags, seq, pid (host order)
_NFGEN = struct.Struct("=BBH")  # family, version, res_id (big-endian, unpacked by hand)
_NLA = struct.Struct("=HH")
_IPPROTO = {6: "TCP", 17: "UDP", 132: "SCTP"}
# IPv6 extension headers we step over to reach the transport header (all but fragments: a
# non-first fragment has no ports, and conntrack reassembles before mangle PREROUTING anyway).
_IPV6_EXT = {0, 43, 60}

PREFIX_MODES: dict[str, Literal["enforce", "audit"]] = {"npg-enforce": "enforce", "npg-audit": "audit"}


@dataclass(frozen=True, slots=True)
class Sample:
    """One sampled packet: where it came from, where it went, and which of our rules logged it."""

    prefix: str
    family: Literal[4, 6]
    source: str
    destination: str
    protocol: str  # "TCP", "UDP", "SCTP"
    port: int  # destination port


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    head = _NLA.pack(_NLA.size + len(payload), kind)
    return (head + payload).ljust(_align(len(head) + len(payload)), b"\0")


def _message(kind: int, flags: int, seq: int, family: int, res_id: int, attrs: bytes) -> bytes:
    body = _NFGEN.pack(family, 0, 0)[:2] + struct.pack(">H", res_id) + attrs
    return _NLMSG.pack(_NLMSG.size + len(body), kind, flags, seq, 0) + body


def render_bind(group: int, copy_range: int, seq: int) -> bytes:
    """The request binding `group` to our socket, copying `copy_range` bytes of each packet."""
    kind = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
    attrs = _attr(NFULA_CFG_CMD, bytes((NFULNL_CFG_CMD_BIND,))) + _attr(
        NFULA_CFG_MODE, struct.pack(">IBB", copy_range, NFULNL_COPY_PACKET, 0)
    )
    return _message(kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0, group, attrs)


def render_unbind(group: int, seq: int) -> bytes:
    kind = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
    attrs = _attr(NFULA_CFG_CMD, bytes((NFULNL_CFG_CMD_UNBIND,)))
    return _message(kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0, group, attrs)


def render_packet_message(prefix: str, family: int, group: int, payload: bytes) -> bytes:
    """A packet message as the kernel sends it (for tests and benchmarks of the parser)."""
    hw = 0x0800 if family == 2 else 0x86DD
    attrs = (
        _attr(NFULA_PACKET_HDR, struct.pack(">HBB", hw, 0, 0))
        + _attr(NFULA_PREFIX, prefix.encode() + b"\0")
        + _attr(NFULA_PAYLOAD, payload)
    )
    return _message((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET, 0, 0, family, group, attrs)


def parse_acks(data: bytes) -> dict[int, int]:
    """seq -> errno (0: success) of the NLMSG_ERROR messages in `data`."""
    out: dict[int, int] = {}
    for kind, seq, body in _messages(data):
        if kind == NLMSG_ERROR and len(body) >= 4:
            out[seq] = -struct.unpack_from("=i", body)[0]
    return out


def _messages(data: bytes) -> list[tuple[int, int, bytes]]:
    out = []
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, kind, _flags, seq, _pid = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size or offset + length > len(data):
            break  # truncated: the rest cannot be trusted
        out.append((kind, seq, data[offset + _NLMSG.size : offset + length]))
        offset += _align(length)
    return out


def _attributes(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    offset = 0
    while offset + _NLA.size <= len(data):
        length, kind = _NLA.unpack_from(data, offset)
        if length < _NLA.size or offset + length > len(data):
            break
        out.setdefault(kind & NLA_TYPE_MASK, data[offset + _NLA.size : offset + length])
        offset += _align(length)
    return out


def parse_ip_packet(payload: bytes) -> tuple[Literal[4, 6], str, str, str, int] | None:
    """(family, source, destination, protocol, destination port) of the start of an IP packet, or
    None when it is not TCP, UDP or SCTP or too short to hold the destination port."""
    if not payload:
        return None
    version = payload[0] >> 4
    if version == 4:
        ihl = (payload[0] & 0x0F) * 4
        if ihl < 20 or len(payload) < ihl + 4:
            return None
        if struct.unpack_from(">H", payload, 6)[0] & 0x1FFF:
            return None  # a non-first fragment carries no ports
        proto = _IPPROTO.get(payload[9])
        if proto is None:
            return None
        src = str(ipaddress.IPv4Address(payload[12:16]))
        dst = str(ipaddress.IPv4Address(payload[16:20]))
        return 4, src, dst, proto, struct.unpack_from(">H", payload, ihl + 2)[0]
    if version == 6:
        if len(payload) < 40:
            return None
        nxt, offset = payload[6], 40
        for _ in range(8):  # a bounded walk over extension headers
            if nxt not in _IPV6_EXT:
                break
            if len(payload) < offset + 8:
                return None
            nxt, offset = payload[offset], offset + (payload[offset + 1] + 1) * 8
        proto = _IPPROTO.get(nxt)
        if proto is None or len(payload) < offset + 4:
            return None
        src = str(ipaddress.IPv6Address(payload[8:24]))
        dst = str(ipaddress.IPv6Address(payload[24:40]))
        return 6, src, dst, proto, struct.unpack_from(">H", payload, offset + 2)[0]
    return None


def parse_nflog(data: bytes) -> tuple[list[Sample], int]:
    """The samples in one datagram read from the NFLOG socket, and how many messages were skipped
    (not a packet message, no payload, not TCP/UDP/SCTP)."""
    samples: list[Sample] = []
    skipped = 0
    packet_kind = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET
    for kind, _seq, body in _messages(data):
        if kind != packet_kind or len(body) < _NFGEN.size:
            if kind not in (NLMSG_ERROR, NLMSG_DONE):
                skipped += 1
            continue
        attrs = _attributes(body[_NFGEN.size :])
        parsed = parse_ip_packet(attrs.get(NFULA_PAYLOAD, b""))
        if parsed is None:
            skipped += 1
            continue
        prefix = attrs.get(NFULA_PREFIX, b"").split(b"\0", 1)[0].decode("ascii", "replace")
        samples.append(Sample(prefix, *parsed))
    return samples, skipped
