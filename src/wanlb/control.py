"""The control socket: one JSON request line in, one JSON response line out.

A unix socket (not TCP) so that only local root can steer the gateway, and so
that a daemon running inside a network namespace is still reachable from the
host: the socket lives in the shared filesystem, not in the network stack.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported by serve(): CLI clients (`wanlb conntrack delete`) should not pay for asyncio
    import asyncio

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
MAX_REQUEST = 64 * 1024
MAX_DEPTH = 16
MAX_CLIENTS = 64
READ_TIMEOUT = 5.0
MAX_REPLY = 16 * 1024 * 1024
log = logging.getLogger("wanlb.control")


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
            while not data.endswith(b"\n") and len(data) < MAX_REPLY:
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
    try:
        reply = json.loads(data)
    except ValueError:
        raise ControlError(f"the daemon at {socket_path} sent an unreadable reply") from None
    if not isinstance(reply, dict):
        raise ControlError(f"the daemon at {socket_path} sent an unreadable reply")
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
    """Listen on ``socket_path`` (replacing a stale socket file) and answer with ``handler``.

    Clients are untrusted even though only root can connect: at most
    :data:`MAX_CLIENTS` are served at once (more are told "busy" and closed at
    once, so idle clients can never exhaust file descriptors), each has
    :data:`READ_TIMEOUT` seconds to send one request line of at most
    :data:`MAX_REQUEST` bytes, and a request that is not a JSON object with a
    string ``cmd`` gets an error reply.  Nothing a client does reaches the log
    at more than one line per client.
    """
    import asyncio

    path = Path(socket_path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    active = 0

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal active
        if active >= MAX_CLIENTS:
            writer.write(json.dumps({"ok": False, "error": "busy: too many control clients"}).encode() + b"\n")
            writer.close()
            return
        active += 1
        try:
            try:
                async with asyncio.timeout(READ_TIMEOUT):
                    line = await reader.readuntil(b"\n")
                reply = await handler(parse_request(line))
            except BadRequest as exc:
                reply = {"ok": False, "error": f"bad request: {exc}"}
            except asyncio.LimitOverrunError:
                reply = {"ok": False, "error": f"bad request: longer than {MAX_REQUEST} bytes"}
            except (asyncio.IncompleteReadError, TimeoutError):
                return  # the client left, or never sent a whole line: nothing to answer
            except Exception as exc:  # a bug must cost this request, never the daemon
                log.exception("control request failed")
                reply = {"ok": False, "error": f"internal error: {type(exc).__name__}"}
            writer.write(json.dumps(reply).encode() + b"\n")
            async with asyncio.timeout(READ_TIMEOUT):
                await writer.drain()
        except (ConnectionError, TimeoutError):
            pass
        finally:
            active -= 1
            writer.close()

    server = await asyncio.start_unix_server(on_client, path=str(path), limit=MAX_REQUEST)
    path.chmod(0o600)
    return server


class BadRequest(ValueError):
    """A request that is not one JSON object with a string ``cmd``; the message says what is wrong."""


def parse_request(line: bytes) -> dict[str, Any]:
    """Decode one request line strictly (bounded depth, an object, ``cmd`` a string)."""
    if _depth(line) > MAX_DEPTH:
        raise BadRequest(f"JSON nested deeper than {MAX_DEPTH} levels")
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):
        raise BadRequest("not JSON") from None
    if not isinstance(message, dict) or not isinstance(message.get("cmd"), str):
        raise BadRequest('a request is a JSON object with a string "cmd"')
    for key in ("isp", "config"):
        if key in message and not isinstance(message[key], str):
            raise BadRequest(f"{key} must be a string")
    return message


def _depth(data: bytes) -> int:
    """Deepest bracket nesting, ignoring brackets inside strings (cheap: no parse)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest
