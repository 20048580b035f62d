"""Test servers that run in the lab's `inet` namespace (stdlib only).

* `http`: answers every request with JSON `{"src": ..., "port": ...}`, the client address it sees, so the
  ISP a connection left through is visible (the gateway SNATs to 100.64.i.2 on WAN i). Also serves as
  the TCP health target. A bare connect/close (a TCP health probe) is fine.
* `stream`: sends one JSON line `{"src": ..., "port": ...}` then, for as long as the client stays
  connected, consecutive 8-byte big-endian counters 0, 1, 2, ... so a client can prove that no byte was
  lost or reordered across a failover (see `wanlb.lab.traffic stream`).
* `https`: the same as `http` over TLS, with a self-signed certificate (`--cert`, `--key`).
* `dns` (UDP): answers every query NOERROR with no records: a living resolver for `method: dns` probes.

Usage: python -m wanlb.lab.servers {http|https|stream|dns} --listen ADDR:PORT [--ready-file PATH] [--rate BPS]
The ready file is created once the socket listens, so `lab up` knows when the lab is usable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

COUNTER_SIZE = 8
CHUNK_COUNTERS = 512  # 4 KiB per write

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _handle_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    src, port = writer.get_extra_info("peername")[:2]
    try:
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
        writer.close()  # a TCP health probe, or garbage: nothing to answer
        return
    body = json.dumps({"src": src, "port": port}).encode() + b"\n"
    head = (
        f"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    writer.write(head + body)
    with contextlib.suppress(ConnectionError):
        await writer.drain()
    writer.close()


def _make_stream_handler(rate: int) -> Handler:
    """Build a handler that paces the counter stream to `rate` bytes/s, so long-lived lab connections
    don't saturate the CPU that the gateway under test needs."""
    interval = COUNTER_SIZE * CHUNK_COUNTERS / rate

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        src, port = writer.get_extra_info("peername")[:2]
        counter = 0
        try:
            writer.write(json.dumps({"src": src, "port": port}).encode() + b"\n")
            loop = asyncio.get_running_loop()
            next_send = loop.time()
            while True:
                chunk = b"".join(n.to_bytes(COUNTER_SIZE, "big") for n in range(counter, counter + CHUNK_COUNTERS))
                counter += CHUNK_COUNTERS
                writer.write(chunk)
                await writer.drain()
                next_send += interval
                await asyncio.sleep(max(0.0, next_send - loop.time()))
        except ConnectionError:
            pass
        finally:
            writer.close()

    return handle


class _DnsResponder(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 12 or data[2] & 0x80:
            return  # not a query
        flags = 0x8180 | (data[2] & 0x01) << 8  # response, recursion available, RD copied, NOERROR
        answer = data[:2] + flags.to_bytes(2, "big") + data[4:6] + b"\0\0\0\0\0\0" + data[12:]
        self.transport.sendto(answer, addr)  # type: ignore[attr-defined]


async def _serve(
    kind: str, host: str, port: int, ready_file: Path | None, rate: int, tls: ssl.SSLContext | None
) -> None:
    loop = asyncio.get_running_loop()
    if kind == "dns":
        transport, _ = await loop.create_datagram_endpoint(_DnsResponder, local_addr=(host, port))
        server: asyncio.AbstractServer | None = None
    else:
        handler = _make_stream_handler(rate) if kind == "stream" else _handle_http
        server = await asyncio.start_server(handler, host, port, backlog=4096, reuse_address=True, ssl=tls)
    if ready_file is not None:
        ready_file.write_text("ready\n")
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if server is not None:
        server.close()
    else:
        transport.close()


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m wanlb.lab.servers`."""
    parser = argparse.ArgumentParser(prog="python -m wanlb.lab.servers", description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["http", "https", "stream", "dns"])
    parser.add_argument("--listen", required=True, help="ADDR:PORT")
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument("--rate", type=int, default=256 * 1024, help="stream bytes/s per client")
    parser.add_argument("--cert", type=Path, help="PEM certificate (https)")
    parser.add_argument("--key", type=Path, help="PEM private key (https)")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    tls = None
    if args.kind == "https":
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.cert, args.key)
    asyncio.run(_serve(args.kind, host, int(port), args.ready_file, args.rate, tls))


if __name__ == "__main__":
    main()
