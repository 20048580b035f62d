"""Test servers that run in the lab's `inet` namespace (stdlib only, except `ftp`).

* `http`: answers every request with JSON `{"src": ..., "port": ...}`, the client address it sees, so the
  ISP a connection left through is visible (the gateway SNATs to 100.64.i.2 on WAN i). Also serves as
  the TCP health target. A bare connect/close (a TCP health probe) is fine.
* `stream`: sends one JSON line `{"src": ..., "port": ...}` then, for as long as the client stays
  connected, consecutive 8-byte big-endian counters 0, 1, 2, ... so a client can prove that no byte was
  lost or reordered across a failover (see `wanlb.lab.traffic stream`).
* `https`: the same as `http` over TLS, with a self-signed certificate (`--cert`, `--key`).
* `dns` (UDP): answers every query NOERROR with no records: a living resolver for `method: dns` probes.
* `ftp`: anonymous, read-only FTP (pyftpdlib, imported only for this kind, so nothing else needs it) serving
  `--root`, where it writes FTP_FILE (`ftp_payload()`, 256 KiB of deterministic bytes), with passive ports
  in `--passive-ports LO-HI`. Every transfer is one JSON line in `--transfer-log`: the control and data
  connections' peers, passive or active, the PORT/EPRT address, bytes. Data connections from or to another
  address than the control connection's are allowed (and logged), so a test sees them instead of a refusal.

Usage: python -m wanlb.lab.servers {http|https|stream|dns|ftp} --listen ADDR:PORT [--ready-file PATH] [--rate BPS]
ADDR may be an IPv6 address in brackets: `--listen [2001:db8::10]:80`.
The ready file is created once the socket listens, so `lab up` knows when the lab is usable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

COUNTER_SIZE = 8
CHUNK_COUNTERS = 512  # 4 KiB per write
FTP_FILE = "payload.bin"
FTP_FILE_SIZE = 256 * 1024

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


def parse_addr(text: str) -> tuple[str, int]:
    """`ADDR:PORT` or `[IPV6]:PORT` -> (addr, port); the brackets are dropped."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{text!r}: use ADDR:PORT or [IPV6]:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def ftp_payload(size: int = FTP_FILE_SIZE) -> bytes:
    """The FTP server's file: SHA-256 of 0, 1, 2, ... (8-byte big-endian) concatenated, cut to `size`."""
    blocks = (hashlib.sha256(n.to_bytes(8, "big")).digest() for n in range(-(-size // 32)))
    return b"".join(blocks)[:size]


def _peer(sock: Any, local: bool = False) -> list[Any] | None:
    try:
        return list((sock.getsockname() if local else sock.getpeername())[:2])
    except OSError:
        return None


def serve_ftp(
    host: str, port: int, ready_file: Path | None, root: Path, passive_ports: range, transfer_log: Path
) -> None:
    """Run the anonymous read-only FTP server until SIGTERM/SIGINT."""
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import DTPHandler, FTPHandler
    from pyftpdlib.servers import FTPServer

    root.mkdir(parents=True, exist_ok=True)
    (root / FTP_FILE).write_bytes(ftp_payload())
    authorizer = DummyAuthorizer()
    authorizer.add_anonymous(str(root))  # default permissions "elr": list and read, nothing else
    log = transfer_log.open("a", buffering=1)

    class DataHandler(DTPHandler):  # type: ignore[misc]
        def __init__(self, sock: Any, cmd_channel: Any) -> None:
            # before the base class may close a dead socket
            cmd_channel.wlab_data_peer, cmd_channel.wlab_data_local = _peer(sock), _peer(sock, local=True)
            super().__init__(sock, cmd_channel)

    class Handler(FTPHandler):  # type: ignore[misc]
        wlab_data_peer: list[Any] | None = None
        wlab_data_local: list[Any] | None = None
        wlab_mode: str | None = None
        wlab_command: str | None = None
        wlab_port_arg: list[Any] | None = None

        def _wlab_data(self, command: str, mode: str) -> None:
            self.wlab_command, self.wlab_mode = command, mode
            self.wlab_port_arg = self.wlab_data_peer = self.wlab_data_local = None

        def ftp_PORT(self, line: str) -> None:
            self._wlab_data("PORT", "active")
            super().ftp_PORT(line)

        def ftp_EPRT(self, line: str) -> None:
            self._wlab_data("EPRT", "active")
            super().ftp_EPRT(line)

        def ftp_PASV(self, line: str) -> None:
            self._wlab_data("PASV", "passive")
            super().ftp_PASV(line)

        def ftp_EPSV(self, line: str) -> None:
            self._wlab_data("EPSV", "passive")
            super().ftp_EPSV(line)

        def _make_eport(self, ip: str, port: int) -> None:
            self.wlab_port_arg = [ip, port]  # the address the server will connect to, as it arrived
            super()._make_eport(ip, port)

        def log_transfer(
            self, cmd: str, filename: str, receive: bool, completed: bool, elapsed: float, bytes: int
        ) -> None:
            super().log_transfer(cmd, filename, receive, completed, elapsed, bytes)
            record = {
                "cmd": cmd,
                "file": Path(filename).name,
                "control_peer": [self.remote_ip, self.remote_port],
                "data_peer": self.wlab_data_peer,
                "data_local": self.wlab_data_local,
                "mode": self.wlab_mode,
                "data_command": self.wlab_command,
                "port_arg": self.wlab_port_arg,
                "bytes": bytes,
                "completed": bool(completed),
                "seconds": elapsed,
            }
            log.write(json.dumps(record) + "\n")

    Handler.authorizer = authorizer
    Handler.dtp_handler = DataHandler
    Handler.passive_ports = list(passive_ports)
    Handler.permit_foreign_addresses = True  # log a data connection from another address, don't refuse it
    Handler.banner = "wanlb lab FTP"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    server = FTPServer((host, port), Handler)
    if ready_file is not None:
        ready_file.write_text("ready\n")
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    server.serve_forever(handle_exit=True)


def _port_range(text: str) -> range:
    lo, _, hi = text.partition("-")
    ports = range(int(lo), int(hi or lo) + 1)
    if not ports or ports.start < 1 or ports.stop > 65536:
        raise ValueError(f"bad port range {text!r}")
    return ports


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m wanlb.lab.servers`."""
    parser = argparse.ArgumentParser(prog="python -m wanlb.lab.servers", description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["http", "https", "stream", "dns", "ftp"])
    parser.add_argument("--listen", required=True, type=parse_addr, help="ADDR:PORT or [IPV6]:PORT")
    parser.add_argument("--ready-file", type=Path)
    parser.add_argument("--rate", type=int, default=256 * 1024, help="stream bytes/s per client")
    parser.add_argument("--cert", type=Path, help="PEM certificate (https)")
    parser.add_argument("--key", type=Path, help="PEM private key (https)")
    parser.add_argument("--root", type=Path, help="directory to serve (ftp)")
    parser.add_argument("--passive-ports", type=_port_range, default=range(30000, 30100), help="LO-HI (ftp)")
    parser.add_argument("--transfer-log", type=Path, help="JSON lines, one per transfer (ftp)")
    args = parser.parse_args(argv)
    host, port = args.listen
    if args.kind == "ftp":
        if args.root is None or args.transfer_log is None:
            parser.error("ftp needs --root and --transfer-log")
        serve_ftp(host, port, args.ready_file, args.root, args.passive_ports, args.transfer_log)
        return
    tls = None
    if args.kind == "https":
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.cert, args.key)
    asyncio.run(_serve(args.kind, host, port, args.ready_file, args.rate, tls))


if __name__ == "__main__":
    main()
