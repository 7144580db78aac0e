"""SCTP INIT packets for probes on a kernel without SCTP sockets: CRC32c, build and parse (pure).

The test machines' kernel has no SCTP protocol module (`socket(..., IPPROTO_SCTP)` fails with
errno 93), so a probe sends an INIT chunk on a raw socket (protocol 132) and another raw socket on
the node sees it arrive. The checksum must be right: conntrack marks an SCTP packet with a bad
CRC32c INVALID, and an INVALID packet is not NEW, so it would slip past a NEW-only filter and prove
nothing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

IPPROTO_SCTP = 132
CHUNK_INIT = 1
_COMMON = struct.Struct("!HHII")  # source port, destination port, verification tag, checksum
_INIT = struct.Struct("!BBHIIHHI")  # type, flags, length, initiate tag, a_rwnd, out streams, in streams, TSN


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC32c (Castagnoli), as SCTP uses it (RFC 9260 appendix A)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def build_init(src_port: int, dst_port: int, initiate_tag: int) -> bytes:
    """A complete SCTP packet (common header + INIT chunk) with a correct checksum, ready for a raw socket."""
    if not 0 < initiate_tag < 1 << 32:
        raise ValueError("the initiate tag of an INIT must be non-zero (RFC 9260 section 3.3.2)")
    chunk = _INIT.pack(CHUNK_INIT, 0, _INIT.size, initiate_tag, 65535, 1, 1, initiate_tag)
    packet = _COMMON.pack(src_port, dst_port, 0, 0) + chunk
    # The CRC is stored least significant byte first (as Linux's sctp_compute_cksum does).
    return packet[:8] + struct.pack("<I", crc32c(packet)) + packet[12:]


@dataclass(frozen=True, slots=True)
class SctpInit:
    src_port: int
    dst_port: int
    initiate_tag: int
    checksum_ok: bool


def parse_init(packet: bytes) -> SctpInit | None:
    """The INIT in an SCTP packet (starting at the SCTP common header), or None for anything else."""
    if len(packet) < _COMMON.size + _INIT.size:
        return None
    src_port, dst_port, _vtag, _ = _COMMON.unpack_from(packet)
    chunk_type, _flags, _length, tag, *_ = _INIT.unpack_from(packet, _COMMON.size)
    if chunk_type != CHUNK_INIT:
        return None
    zeroed = packet[:8] + b"\0\0\0\0" + packet[12:]
    ok = struct.unpack_from("<I", packet, 8)[0] == crc32c(zeroed)
    return SctpInit(src_port, dst_port, tag, ok)


def strip_ipv4_header(datagram: bytes) -> bytes:
    """An IPv4 raw socket hands over the IP header too (IPv6 raw sockets do not)."""
    return datagram[(datagram[0] & 0x0F) * 4 :] if datagram else datagram
