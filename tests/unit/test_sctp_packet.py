"""Unit tests of tests.sctp: CRC32c against the standard check value, INIT build and parse (pure)."""

from __future__ import annotations

import pytest

from tests.sctp import build_init, crc32c, parse_init, strip_ipv4_header


def test_crc32c_check_value() -> None:
    # The CRC-32C ("Castagnoli") check value of the ASCII digits 1..9, and RFC 3720's all-zero vector.
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA


def test_init_round_trip_and_a_corrupted_packet_is_seen() -> None:
    packet = build_init(40000, 30080, 0xDEADBEEF)
    assert len(packet) == 12 + 20
    parsed = parse_init(packet)
    assert parsed is not None and parsed.checksum_ok
    assert (parsed.src_port, parsed.dst_port, parsed.initiate_tag) == (40000, 30080, 0xDEADBEEF)
    corrupted = packet[:-1] + bytes([packet[-1] ^ 1])
    assert parse_init(corrupted) is not None and not parse_init(corrupted).checksum_ok  # type: ignore[union-attr]
    ipv4_header = bytes([0x45]) + bytes(19)
    assert strip_ipv4_header(ipv4_header + packet) == packet
    with pytest.raises(ValueError, match="non-zero"):
        build_init(1, 2, 0)
