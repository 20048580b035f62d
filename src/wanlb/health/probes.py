"""Probes: one asyncio check of one target, leaving through one ISP and no other.

Every probe socket gets ``SO_MARK`` = the ISP's mark (so ``ip rule fwmark``
sends it to that ISP's routing table, which wanlb keeps in place while the ISP
is down) and ``SO_BINDTODEVICE`` = the ISP's WAN interface (so even a missing
route cannot make it leave through another uplink).  The nft ``output`` chain
leaves packets that already carry a mark in wanlb's bits alone, so a probe is
never rebalanced.

A probe returns the round-trip time in seconds, or raises :class:`ProbeFailed`
with a short reason.  Timeouts are the caller's business (``asyncio.timeout``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import os
import random
import socket
import ssl
import struct
import time
from dataclasses import dataclass

ICMP_ECHO_REQUEST = 8
ICMP_ECHO_REPLY = 0
ICMP6_ECHO_REQUEST = 128
ICMP6_ECHO_REPLY = 129
SOL_RAW = 255
ICMP_FILTER = 1  # linux/icmp.h: a bitmask of ICMP types the raw socket must *not* receive
ICMP6_FILTER = 1  # linux/icmpv6.h (level IPPROTO_ICMPV6): 256 bits, a set bit blocks that ICMPv6 type
RAW_RCVBUF = 1 << 20


class ProbeFailed(Exception):
    """The target did not answer as expected (the reason is the message)."""


@dataclass(frozen=True)
class Egress:
    """Where a probe must leave: the ISP's mark and WAN interface."""

    mark: int
    device: str
    family: int = 4  # the probes' address family: each family's health is probed on its own

    @property
    def af(self) -> int:
        return socket.AF_INET6 if self.family == 6 else socket.AF_INET


def _pin(sock: socket.socket, egress: Egress) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, egress.mark)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, egress.device.encode())
    sock.setblocking(False)


def _socket(kind: int, egress: Egress, proto: int = 0) -> socket.socket:
    sock = socket.socket(egress.af, kind, proto)
    try:
        _pin(sock, egress)
    except OSError:
        sock.close()
        raise
    return sock


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


class IcmpPinger:
    """One raw ICMP socket per ISP; echo replies are matched to requests by (source, id, sequence).

    Raw sockets see every ICMP packet the device receives: the kernel filters
    them down to echo replies (``ICMP_FILTER``), the identifier is random per
    pinger, the sequence number per request.  A send error (the WAN device was
    deleted and recreated, as PPP and LTE devices are) closes the socket, and
    the next ping opens a fresh one bound to the new device.
    """

    def __init__(self, egress: Egress):
        self.egress = egress
        self.ident = random.randrange(1, 0xFFFF)
        self._seq = itertools.count(random.randrange(0xFFFF))
        self._waiting: dict[int, tuple[asyncio.Future[float], float, str]] = {}
        self._sock: socket.socket | None = None

    def _open(self) -> socket.socket:
        if self._sock is None:
            if self.egress.family == 6:  # the kernel fills in ICMPv6 checksums and strips the IPv6 header
                sock = _socket(socket.SOCK_RAW, self.egress, socket.IPPROTO_ICMPV6)
                blocked = [0xFFFFFFFF] * 8
                blocked[ICMP6_ECHO_REPLY >> 5] &= ~(1 << (ICMP6_ECHO_REPLY & 31))
                sock.setsockopt(socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("8I", *blocked))
            else:
                sock = _socket(socket.SOCK_RAW, self.egress, socket.IPPROTO_ICMP)
                sock.setsockopt(SOL_RAW, ICMP_FILTER, struct.pack("I", 0xFFFFFFFF & ~(1 << ICMP_ECHO_REPLY)))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RAW_RCVBUF)
            asyncio.get_running_loop().add_reader(sock.fileno(), self._on_readable)
            self._sock = sock
        return self._sock

    def _drop_socket(self) -> None:
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        self._drop_socket()
        for future, _, _ in self._waiting.values():
            future.cancel()
        self._waiting.clear()

    def _on_readable(self) -> None:
        assert self._sock is not None
        while True:
            try:
                packet, peer = self._sock.recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. an ICMP error queued on the socket; the request times out
            source = peer[0]
            reply = parse_echo6_reply(packet) if self.egress.family == 6 else parse_echo_reply(packet)
            if reply is None or reply[0] != self.ident:
                continue
            waiting = self._waiting.get(reply[1])
            if waiting and waiting[2] == source and not waiting[0].done():
                waiting[0].set_result(time.monotonic() - waiting[1])

    async def ping(self, target: str) -> float:
        sock = self._open()
        seq = next(self._seq) & 0xFFFF
        payload = struct.pack("!d", time.monotonic()) + b"wanlb-probe"
        if self.egress.family == 6:
            packet = struct.pack("!BBHHH", ICMP6_ECHO_REQUEST, 0, 0, self.ident, seq) + payload
            target = str(ipaddress.IPv6Address(target))  # as recvfrom will show the replying source
        else:
            packet = echo_request(self.ident, seq, payload)
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiting[seq] = (future, time.monotonic(), target)
        try:
            try:
                sock.sendto(packet, (target, 0))
            except OSError as exc:
                self._drop_socket()  # a stale device binding heals on the next ping
                raise ProbeFailed(f"send: {os.strerror(exc.errno) if exc.errno else exc}") from None
            return await future
        finally:
            self._waiting.pop(seq, None)


def parse_echo_reply(packet: bytes) -> tuple[int, int] | None:
    """(identifier, sequence) of an IPv4 packet holding an ICMP echo reply, else None."""
    if len(packet) < 20:
        return None
    header_len = (packet[0] & 0x0F) * 4
    icmp = packet[header_len : header_len + 8]
    if len(icmp) < 8 or icmp[0] != ICMP_ECHO_REPLY:
        return None
    _kind, _code, _sum, ident, seq = struct.unpack("!BBHHH", icmp)
    return ident, seq


def parse_echo6_reply(packet: bytes) -> tuple[int, int] | None:
    """(identifier, sequence) of an ICMPv6 echo reply as a raw ICMPv6 socket reads it (no IPv6 header)."""
    if len(packet) < 8 or packet[0] != ICMP6_ECHO_REPLY:
        return None
    _kind, _code, _sum, ident, seq = struct.unpack("!BBHHH", packet[:8])
    return ident, seq


def echo_request(ident: int, seq: int, payload: bytes) -> bytes:
    """An ICMP echo request with its checksum."""
    header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, ident, seq)
    return struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, _checksum(header + payload), ident, seq) + payload


async def _connect(egress: Egress, target: str, port: int) -> socket.socket:
    sock = _socket(socket.SOCK_STREAM, egress)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (target, port))
    except OSError as exc:
        sock.close()
        raise ProbeFailed(f"connect {target}:{port}: {os.strerror(exc.errno) if exc.errno else exc}") from None
    except BaseException:
        sock.close()
        raise
    return sock


async def tcp_probe(egress: Egress, target: str, port: int) -> float:
    """Success = the TCP handshake completes."""
    start = time.monotonic()
    (await _connect(egress, target, port)).close()
    return time.monotonic() - start


# No CA store is loaded (create_default_context() reads it: 25 ms at every start, for nothing here).
_INSECURE = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
_INSECURE.check_hostname = False
_INSECURE.verify_mode = ssl.CERT_NONE  # targets are IP addresses: reachability, not identity, is checked


async def http_probe(egress: Egress, target: str, port: int, tls: bool, url_path: str, status: int) -> float:
    """Success = ``GET url_path`` answers with the expected status code."""
    start = time.monotonic()
    sock = await _connect(egress, target, port)
    writer = None
    try:
        reader, writer = await asyncio.open_connection(
            sock=sock, ssl=_INSECURE if tls else None, server_hostname=target if tls else None
        )
        request = f"GET {url_path} HTTP/1.0\r\nHost: {target}\r\nUser-Agent: wanlb-probe\r\nConnection: close\r\n\r\n"
        writer.write(request.encode())
        line = await reader.readline()
    except (OSError, ssl.SSLError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
        raise ProbeFailed(f"http {target}:{port}: {type(exc).__name__}: {exc}"[:200]) from None
    finally:
        if writer is not None:
            writer.close()
        else:
            sock.close()
    parts = line.split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ProbeFailed(f"http {target}:{port}: not an HTTP answer")
    if int(parts[1]) != status:
        raise ProbeFailed(f"http {target}:{port}: status {int(parts[1])}, expected {status}")
    return time.monotonic() - start


def dns_query(ident: int, name: str) -> bytes:
    """A recursive query for ``name`` (type A, or NS for the root ``.``)."""
    labels = [label for label in name.strip(".").split(".") if label]
    qname = b"".join(bytes([len(label)]) + label.encode("idna") for label in labels) + b"\0"
    qtype = 2 if not labels else 1
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, 1)


async def dns_probe(egress: Egress, target: str, port: int, name: str) -> float:
    """Success = the resolver answers the query (NOERROR or NXDOMAIN: it is alive and resolving)."""
    ident = random.randrange(0x10000)
    loop = asyncio.get_running_loop()
    sock = _socket(socket.SOCK_DGRAM, egress)
    start = time.monotonic()
    try:
        await loop.sock_connect(sock, (target, port))
        await loop.sock_sendall(sock, dns_query(ident, name))
        while True:
            answer = await loop.sock_recv(sock, 4096)
            if len(answer) >= 12 and struct.unpack("!H", answer[:2])[0] == ident and answer[2] & 0x80:
                break
    except OSError as exc:
        raise ProbeFailed(f"dns {target}:{port}: {os.strerror(exc.errno) if exc.errno else exc}") from None
    finally:
        sock.close()
    rcode = answer[3] & 0x0F
    if rcode not in (0, 3):
        raise ProbeFailed(f"dns {target}:{port}: rcode {rcode}")
    return time.monotonic() - start


ICMP_PAYLOAD = 8 + len(b"wanlb-probe")  # the send time and a tag (ping above)
_TCP = 6 * 52 + 8  # SYN and SYN-ACK (with options), ACK, FIN, FIN, ACK: about 6 segments of 52 bytes
_TLS_HANDSHAKE = 6000  # a TLS 1.3 handshake with a typical certificate chain, both ways


def wire_bytes(method: str, family: int, dns_name: str = ".", http_path: str = "/") -> int:
    """What one probe costs on the wire, both directions, IP headers included (link layer not): exact for
    ``icmp`` (an echo request and its reply), ``dns`` (the query and a minimal answer), an estimate for the
    TCP methods (segments of a connect and close; a small HTTP exchange; a TLS handshake).  Status shows it
    per day and docs/health.md per month: a metered backup pays for its own probes."""
    ip = 40 if family == 6 else 20
    if method == "icmp":
        return 2 * (ip + 8 + ICMP_PAYLOAD)
    if method == "dns":
        query = 8 + len(dns_query(0, dns_name))
        return 2 * ip + query + query + 16  # the answer repeats the question and adds a record or so
    tcp = _TCP + 6 * (ip - 20)
    if method == "tcp":
        return tcp
    http = tcp + 60 + len(http_path) + 200  # the GET and a short answer's status line and headers
    return http + (_TLS_HANDSHAKE if method == "https" else 0)
