"""The lab's servers and traffic generators, run against each other on loopback (no root needed)."""

from __future__ import annotations

import asyncio
import socket

from wanlb.lab.servers import COUNTER_SIZE, _handle_http, _make_stream_handler
from wanlb.lab.traffic import run_http, run_stream


async def _with_server(handler, client):  # type: ignore[no-untyped-def]
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        return await client(port)


def test_http_reports_the_source_it_saw() -> None:
    result = asyncio.run(
        _with_server(_handle_http, lambda port: run_http("127.0.0.1", port, connections=300, parallel=20, timeout=5))
    )
    assert result["sources"] == {"127.0.0.1": 300}
    assert result["failed"] == 0


def test_http_tolerates_a_bare_tcp_probe() -> None:
    async def probe_then_get(port: int) -> dict:
        with socket.create_connection(("127.0.0.1", port)):
            pass  # what a TCP health check does
        return await run_http("127.0.0.1", port, connections=1, parallel=1, timeout=5)

    assert asyncio.run(_with_server(_handle_http, probe_then_get))["sources"] == {"127.0.0.1": 1}


def test_failures_are_counted_not_raised() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connection refused
        result = asyncio.run(run_http("127.0.0.1", port, connections=3, parallel=3, timeout=5))
    assert result["failed"] == 3 and result["errors"] == {"ConnectionRefusedError": 3}


def test_stream_is_verified_until_stopped() -> None:
    handler = _make_stream_handler(rate=4 * 1024 * 1024)
    result = asyncio.run(_with_server(handler, lambda port: run_stream("127.0.0.1", port, duration=0.3, stall=5)))
    assert result["ok"] is True and result["error"] is None
    assert result["src"] == "127.0.0.1"
    assert result["counters"] > 0


def test_stream_reports_a_corrupted_sequence() -> None:
    async def bad(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'{"src": "127.0.0.1"}\n' + b"".join(n.to_bytes(COUNTER_SIZE, "big") for n in [0, 1, 3] * 64))
        await writer.drain()
        await asyncio.sleep(5)

    result = asyncio.run(_with_server(bad, lambda port: run_stream("127.0.0.1", port, duration=3, stall=3)))
    assert result["ok"] is False
    assert "counter 3 where 2 was due" in result["error"]


def test_stream_reports_a_closed_connection() -> None:
    async def closes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b'{"src": "127.0.0.1"}\n')
        writer.close()

    result = asyncio.run(_with_server(closes, lambda port: run_stream("127.0.0.1", port, duration=3, stall=3)))
    assert result["ok"] is False and "IncompleteReadError" in result["error"]
