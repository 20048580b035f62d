"""The control socket treats its clients as untrusted: bounded, strict, never crashing, never starved."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest

from wanlb import control


async def _serve(tmp_path: Path) -> tuple[str, asyncio.AbstractServer, list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    async def handler(message: dict[str, Any]) -> dict[str, Any]:
        seen.append(message)
        if message["cmd"] == "boom":
            raise RuntimeError("a bug")
        return {"ok": True, "echo": message["cmd"]}

    path = str(tmp_path / "run" / "wanlb.sock")
    return path, await control.serve(path, handler), seen


async def _ask(path: str, payload: bytes) -> dict[str, Any]:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(payload)
    await writer.drain()
    line = await reader.readline()
    writer.close()
    return json.loads(line)


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"not json\n", "not JSON"),
        (b"[1, 2]\n", 'string "cmd"'),
        (b'{"cmd": 5}\n', 'string "cmd"'),
        (b'{"cmd": "status", "isp": 7}\n', "isp must be a string"),
        (b"[" * 30000 + b"]" * 30000 + b"\n", "deeper than 16"),
        (b'{"cmd": "' + b"x" * 70000 + b'"}\n', "longer than 65536 bytes"),
        (b'{"cmd": "boom"}\n', "internal error: RuntimeError"),
    ],
    ids=["garbage", "array", "cmd-type", "isp-type", "deep", "huge", "handler-bug"],
)
def test_bad_requests_get_an_error_reply(tmp_path: Path, payload: bytes, error: str) -> None:
    async def main() -> dict[str, Any]:
        path, server, _ = await _serve(tmp_path)
        try:
            return await _ask(path, payload)
        finally:
            server.close()

    reply = asyncio.run(main())
    assert reply["ok"] is False and error in reply["error"], reply


def test_idle_clients_beyond_the_cap_are_turned_away_and_others_still_served(tmp_path: Path) -> None:
    async def main() -> tuple[list[bytes], dict[str, Any], dict[str, Any]]:
        path, server, _ = await _serve(tmp_path)
        idle = []
        try:
            for _ in range(control.MAX_CLIENTS):
                idle.append(await asyncio.open_unix_connection(path))
            await asyncio.sleep(0.1)
            extra = [await asyncio.open_unix_connection(path) for _ in range(5)]
            turned_away = [await reader.readline() for reader, _ in extra]
            busy = await _ask(path, b'{"cmd": "status"}\n')
            for _, writer in idle:
                writer.close()
            await asyncio.sleep(0.1)
            served = await _ask(path, b'{"cmd": "status"}\n')
            return turned_away, busy, served
        finally:
            server.close()

    turned_away, busy, served = asyncio.run(main())
    assert all(b"busy" in line for line in turned_away)
    assert busy["ok"] is False and "busy" in busy["error"]
    assert served == {"ok": True, "echo": "status"}


def test_the_socket_is_root_only(tmp_path: Path) -> None:
    async def main() -> None:
        path, server, _ = await _serve(tmp_path)
        server.close()
        assert Path(path).stat().st_mode & 0o777 == 0o600
        assert Path(path).parent.stat().st_mode & 0o777 == 0o700

    asyncio.run(main())


def test_a_client_that_sends_nothing_is_dropped_after_the_read_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control, "READ_TIMEOUT", 0.2)

    async def main() -> bytes:
        path, server, _ = await _serve(tmp_path)
        try:
            reader, writer = await asyncio.open_unix_connection(path)
            data = await asyncio.wait_for(reader.read(), timeout=5)  # EOF once the server gives up
            writer.close()
            return data
        finally:
            server.close()

    assert asyncio.run(main()) == b""


def test_the_client_refuses_an_unreadable_reply(tmp_path: Path) -> None:
    path = tmp_path / "fake.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)

    async def fake() -> None:
        loop = asyncio.get_running_loop()
        conn, _ = await loop.sock_accept(srv)
        await loop.sock_recv(conn, 1024)
        await loop.sock_sendall(conn, b"[1, 2\n")
        conn.close()

    async def main() -> str:
        task = asyncio.create_task(fake())
        try:
            await asyncio.to_thread(control.request, str(path), {"cmd": "status"}, 5)
        except control.ControlError as exc:
            return str(exc)
        finally:
            await task
        return "no error"

    srv.setblocking(False)
    assert "unreadable reply" in asyncio.run(main())
    srv.close()
