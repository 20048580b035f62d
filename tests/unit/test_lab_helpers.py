"""The lab's servers and traffic generators, run against each other on loopback (no root needed)."""

from __future__ import annotations

import asyncio
import ftplib
import hashlib
import io
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from wanlb.lab.lab import module_env
from wanlb.lab.servers import (
    COUNTER_SIZE,
    FTP_FILE,
    FTP_FILE_SIZE,
    _handle_http,
    _make_stream_handler,
    ftp_payload,
    parse_addr,
)
from wanlb.lab.traffic import _addr as traffic_addr
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


@pytest.mark.parametrize(
    ("text", "addr"),
    [("203.0.113.10:80", ("203.0.113.10", 80)), ("[2001:db8:f::10]:8080", ("2001:db8:f::10", 8080)),
     ("[::1]:21", ("::1", 21)), ("0.0.0.0:8080", ("0.0.0.0", 8080))],
)  # fmt: skip
def test_listen_and_target_addresses(text: str, addr: tuple[str, int]) -> None:
    assert parse_addr(text) == addr
    assert traffic_addr(text) == addr


@pytest.mark.parametrize("text", ["203.0.113.10", "203.0.113.10:", "[::1]:x", ""])
def test_bad_addresses_are_rejected(text: str) -> None:
    with pytest.raises(ValueError, match="ADDR:PORT"):
        parse_addr(text)


def test_ftp_payload_is_deterministic() -> None:
    data = ftp_payload()
    assert len(data) == FTP_FILE_SIZE == 256 * 1024
    assert data == ftp_payload() and ftp_payload(100) == data[:100]
    assert data[:32] == hashlib.sha256(bytes(8)).digest()
    assert len(set(data[i : i + 32] for i in range(0, len(data), 32))) == len(data) // 32  # no repeated block


def test_servers_and_traffic_do_not_import_pyftpdlib() -> None:
    """Only the `ftp` kind needs pyftpdlib: `lab up` and the traffic clients must work without it."""
    code = "import sys, wanlb.lab.servers, wanlb.lab.traffic, wanlb.lab.lab; print('pyftpdlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=module_env())
    assert out.stdout.strip() == "False"


@pytest.fixture
def ftp_server(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """The lab's FTP server on 127.0.0.1 (a free port, passive ports 30000-30009); yields (port, transfer log)."""
    pytest.importorskip("pyftpdlib")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log, ready = tmp_path / "transfers.jsonl", tmp_path / "ready"
    argv = [sys.executable, "-m", "wanlb.lab.servers", "ftp", "--listen", f"127.0.0.1:{port}",
            "--root", str(tmp_path / "root"), "--transfer-log", str(log), "--ready-file", str(ready),
            "--passive-ports", "30000-30009"]  # fmt: skip
    proc = subprocess.Popen(argv, env=module_env(), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the ftp server did not start"
            time.sleep(0.02)
        yield port, log
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0 and "Traceback" not in err, err  # a clean stop on SIGTERM


def test_ftp_serves_the_payload_read_only_and_logs_each_transfer(ftp_server: tuple[int, Path]) -> None:
    port, log = ftp_server
    for passive in (True, False):  # ftplib sends PASV / PORT on IPv4
        with ftplib.FTP() as ftp:
            ftp.connect("127.0.0.1", port, timeout=10)
            ftp.login()  # anonymous
            ftp.set_pasv(passive)
            chunks: list[bytes] = []
            ftp.retrbinary(f"RETR {FTP_FILE}", chunks.append)
            assert b"".join(chunks) == ftp_payload()
            with pytest.raises(ftplib.error_perm, match="550"):
                ftp.storbinary("STOR up.bin", io.BytesIO(b"x"))
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["mode"], r["data_command"]) for r in records] == [("passive", "PASV"), ("active", "PORT")]
    for r in records:
        assert r["cmd"] == "RETR" and r["file"] == FTP_FILE and r["completed"] is True
        assert r["bytes"] == FTP_FILE_SIZE
        assert r["control_peer"][0] == r["data_peer"][0] == "127.0.0.1"
    passive, active = records
    assert 30000 <= passive["data_local"][1] <= 30009 and passive["port_arg"] is None
    assert active["port_arg"] == active["data_peer"]  # the server connected where PORT told it to
