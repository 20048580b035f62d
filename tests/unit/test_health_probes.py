"""Wire formats of the probes (the probes themselves run against the kernel in test_failover.py)."""

from __future__ import annotations

import struct

from wanlb.health.probes import _checksum, dns_query, echo_request, parse_echo_reply


def ipv4(payload: bytes, ihl: int = 5) -> bytes:
    return bytes([0x40 | ihl]) + bytes(ihl * 4 - 1) + payload


def test_echo_request_checksum_verifies() -> None:
    packet = echo_request(0x1234, 7, b"payload!")
    assert packet[:2] == b"\x08\x00" and struct.unpack("!HH", packet[4:8]) == (0x1234, 7)
    assert _checksum(packet) == 0  # a correct checksum sums to zero over the whole message


def test_echo_reply_parsing_handles_ip_options_and_ignores_other_icmp() -> None:
    reply = b"\x00\x00\x00\x00" + struct.pack("!HH", 0xBEEF, 42) + b"data"
    assert parse_echo_reply(ipv4(reply)) == (0xBEEF, 42)
    assert parse_echo_reply(ipv4(reply, ihl=6)) == (0xBEEF, 42)
    assert parse_echo_reply(ipv4(b"\x08" + reply[1:])) is None  # an echo request
    assert parse_echo_reply(ipv4(b"\x03\x01\x00\x00")) is None  # truncated unreachable
    assert parse_echo_reply(b"\x45") is None


def test_dns_query_layout() -> None:
    query = dns_query(0xABCD, "example.org")
    ident, flags, qd, an, ns, ar = struct.unpack("!HHHHHH", query[:12])
    assert (ident, flags, qd, an, ns, ar) == (0xABCD, 0x0100, 1, 0, 0, 0)  # recursion desired
    assert query[12:] == b"\x07example\x03org\x00" + struct.pack("!HH", 1, 1)  # A, IN
    assert dns_query(1, ".")[12:] == b"\x00" + struct.pack("!HH", 2, 1)  # the root: NS
