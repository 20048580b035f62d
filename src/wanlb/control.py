"""The control socket: one JSON request line in, one JSON response line out.

A unix socket (not TCP) so that only local root can steer the gateway, and so
that a daemon running inside a network namespace is still reachable from the
host: the socket lives in the shared filesystem, not in the network stack.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported by serve(): CLI clients (`wanlb conntrack delete`) should not pay for asyncio
    import asyncio

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_REQUEST = 1 << 20


class ControlError(RuntimeError):
    """No daemon answers at the socket, or it answered with an error."""


class DaemonRefused(ControlError):
    """The daemon answered, and the answer is an error (bad request, failed reload)."""


def request(socket_path: str, message: dict[str, Any], timeout: float = 10.0) -> dict[str, Any]:
    """Send one request to the daemon and return its reply."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(socket_path)
            sock.sendall(json.dumps(message).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except (FileNotFoundError, ConnectionRefusedError):
        raise ControlError(f"no wanlb daemon is running (nothing answers at {socket_path})") from None
    except OSError as exc:
        raise ControlError(f"cannot talk to the daemon at {socket_path}: {exc.strerror or exc}") from None
    if not data:
        raise ControlError(f"the daemon at {socket_path} closed the connection without answering")
    reply = json.loads(data)
    if not reply.get("ok", False):
        raise DaemonRefused(reply.get("error", "the daemon reported an error"))
    return reply


def socket_in_use(socket_path: str) -> bool:
    """True when a live daemon already listens at ``socket_path``."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            sock.connect(socket_path)
            return True
    except OSError:
        return False


async def serve(socket_path: str, handler: Handler) -> asyncio.AbstractServer:
    """Listen on ``socket_path`` (replacing a stale socket file) and answer with ``handler``."""
    import asyncio

    path = Path(socket_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            try:
                message = json.loads(line[:MAX_REQUEST])
                if not isinstance(message, dict):
                    raise ValueError("request must be a JSON object")
                reply = await handler(message)
            except (ValueError, KeyError) as exc:
                reply = {"ok": False, "error": f"bad request: {exc}"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_unix_server(on_client, path=str(path))
    path.chmod(0o600)
    return server
