"""The HTTP API, ``/metrics`` and the dashboard, served by the daemon in its own event loop (off by default).

Reads answer from the daemon's memory (the same ``status`` the unix socket gives) plus, where a figure
lives in the kernel, one bounded read in a worker thread (our nft counters; a filtered conntrack dump
for ``/connections``).  No handler waits on the kernel in the loop, so probing and failover never wait
for a client.  Writes (disable, enable, reload) need the bearer token from ``api.token_file``; reads
need it too unless ``api.public_read``.  A wrong or missing token is 401 and changes nothing.

``/api/v1/stream`` is Server-Sent Events: every ISP event and reload as it happens, and once a second
while anyone listens a ``stats`` message (per ISP: connections, new connections/s, bytes/s in and out,
from the nft counters).  Each client has a bounded queue; one that does not keep up is disconnected
rather than let the daemon buffer for it.  Events and reloads carry ids, and a client that reconnects with
``Last-Event-ID`` gets what it missed from the last :data:`REPLAY` (:class:`Hub`).  ``/api/v1/history`` is
the daemon's last day of 10 s samples per ISP (:mod:`wanlb.trends`), for the dashboard's charts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import os
import re
import stat
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from wanlb import commands, view
from wanlb.config import ApiConfig, read_bounded
from wanlb.protocols import NUMBERS as PROTOCOLS

log = logging.getLogger("wanlb.api")

MAX_STREAM_CLIENTS = 32
MAX_HTTP_CONNECTIONS = 100
STREAM_QUEUE = 256  # messages buffered per SSE client before it is dropped as too slow
REPLAY = 256  # events and reloads kept for clients that reconnect with Last-Event-ID
UNNUMBERED = frozenset({"stats"})  # SSE messages without an id (not replayed)
_EVENT_ID = re.compile(r"([0-9a-f]{8})-([0-9]{1,18})")
STATS_INTERVAL = 1.0
KEEPALIVE = 15.0  # seconds between SSE comments on a quiet stream
MAX_TOKEN_BYTES = 4096
MAX_CONNECTIONS = 10_000
CONNECTIONS_TIMEOUT = 10.0


class TokenError(Exception):
    """The token file cannot be used."""


def read_token(path: str) -> str:
    """The bearer token: the file's first line, from a regular file no one but its owner may read."""
    try:
        st = os.stat(path)
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise TokenError(f"{path}: mode {stat.S_IMODE(st.st_mode):o}: group and others must have no access "
                             "(chmod 600)")  # fmt: skip
        raw = read_bounded(path, MAX_TOKEN_BYTES)
    except OSError as exc:
        raise TokenError(f"{path}: {exc.strerror}") from None
    except ValueError as exc:
        raise TokenError(f"{path}: {exc}") from None
    token = raw.decode("utf-8", "replace").strip().splitlines()[0].strip() if raw.strip() else ""
    if len(token) < 16:
        raise TokenError(f"{path}: the token must be at least 16 characters")
    return token


class Hub:
    """Fan-out of SSE messages to bounded per-client queues, and the last :data:`REPLAY` events and reloads.

    Events and reloads carry an ``id:`` (``<run>-<n>``: ``run`` is random per daemon start, ``n`` counts up),
    so a client that reconnects with ``Last-Event-ID`` gets what it missed.  Stats carry none: they are a
    gauge, the next one a second later says all, and ``/api/v1/history`` has the past."""

    def __init__(self, run: str | None = None) -> None:
        self.clients: set[asyncio.Queue[str | None]] = set()
        self.run = run or os.urandom(4).hex()
        self.sent = 0  # ids given so far
        self.kept: deque[tuple[int, str]] = deque(maxlen=REPLAY)  # (n, message), for resuming clients

    def publish(self, kind: str, data: Any) -> None:
        body = json.dumps(data, separators=(",", ":"))
        if kind in UNNUMBERED:
            message = f"event: {kind}\ndata: {body}\n\n"
        else:
            self.sent += 1
            message = f"event: {kind}\nid: {self.run}-{self.sent}\ndata: {body}\n\n"
            self.kept.append((self.sent, message))
        for queue in list(self.clients):
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:  # too slow: end its stream instead of buffering without bound
                self.clients.discard(queue)
                with contextlib.suppress(asyncio.QueueFull):
                    queue.get_nowait()
                    queue.put_nowait(None)

    def subscribe(self, last_event_id: str | None) -> tuple[asyncio.Queue[str | None], list[str]]:
        """A new client's queue, and what it missed since ``last_event_id`` (its ``Last-Event-ID``, None
        on a first connect): the kept messages after it, or a ``gap`` message and all that is kept when it
        is older than those or not this run's.  Raises ValueError for a malformed id (nothing subscribed)."""
        backlog = [] if last_event_id is None else self._since(last_event_id)
        queue: asyncio.Queue[str | None] = asyncio.Queue(STREAM_QUEUE)
        self.clients.add(queue)
        return queue, backlog

    def _since(self, last_event_id: str) -> list[str]:
        m = _EVENT_ID.fullmatch(last_event_id)
        if m is None:
            raise ValueError(f"bad Last-Event-ID {last_event_id[:80]!r}: the stream's ids look like 1a2b3c4d-42")
        seen = int(m.group(2))
        oldest = self.kept[0][0] if self.kept else self.sent + 1
        if m.group(1) != self.run or seen > self.sent:
            reason = "not this daemon's (it restarted since)"
        elif seen < oldest - 1:
            reason = f"older than the last {REPLAY} messages kept"
        else:
            return [message for n, message in self.kept if n > seen]
        gap = {"last_event_id": last_event_id, "oldest": f"{self.run}-{oldest}" if self.kept else None,
               "reason": reason}  # fmt: skip
        return [f"event: gap\ndata: {json.dumps(gap, separators=(',', ':'))}\n\n", *(m for _, m in self.kept)]

    def unsubscribe(self, queue: asyncio.Queue[str | None]) -> None:
        self.clients.discard(queue)


@dataclass
class _Rates:
    at: float
    counters: dict[str, dict[str, int]]


def stats_message(status: view.Status, counters: dict[str, dict[str, int]], before: _Rates | None,
                  now: float) -> dict[str, Any]:  # fmt: skip
    """Per ISP: connections, new connections per second, bytes per second in and out (since ``before``)."""
    dt = now - before.at if before is not None else 0.0
    out = {}
    for isp in status.isps:
        name = isp.name

        def rate(counter: str, field: str, name: str = name) -> float | None:
            if before is None or dt <= 0:
                return None
            new = counters.get(counter, {}).get(field)
            old = before.counters.get(counter, {}).get(field)
            return None if new is None or old is None or new < old else round((new - old) / dt, 1)

        out[name] = {
            "status": isp.status,
            "connections": status.conn_counts.get(name, 0),
            "new_per_second": rate(f"isp_{name}_new", "packets"),
            "rx_bytes_per_second": rate(f"isp_{name}_rx", "bytes"),
            "tx_bytes_per_second": rate(f"isp_{name}_tx", "bytes"),
            "rtt_ms": isp.health.latency_ms if isp.health.monitored else None,
            "loss_percent": isp.health.loss_percent if isp.health.monitored else None,
        }
    return {"time": round(time.time(), 3), "isps": out}


class Api:
    """The FastAPI app on the daemon's port (:class:`wanlb.commands.Port`), its SSE hub and its servers."""

    def __init__(self, port: commands.Port, config: ApiConfig) -> None:
        self.port = port
        self.config = config
        self.token: str | None = read_token(config.token_file) if config.token_file else None
        self.hub = Hub()
        self.app = self._build()
        self._servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []
        self._ticker: asyncio.Task[None] | None = None
        self.rates: _Rates | None = None  # the last stats tick's counters (for the next one's rates)
        self._dumps = asyncio.Semaphore(1)

    async def reconfigure(self, config: ApiConfig) -> None:
        """A reload: a new token file or read policy applies at once; new listen addresses at the next start.

        The token file is read in a worker: a file on a hung mount must not stall probing."""
        if config.listen != self.config.listen:
            log.warning("api.listen changes take effect at the next start")
        try:
            self.token = await asyncio.to_thread(read_token, config.token_file) if config.token_file else None
        except TokenError as exc:
            log.error("api token not reloaded, keeping the previous one: %s", exc)
            return
        self.config = config

    # --- serving --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on every configured address; raises if one cannot be bound."""
        for listen in self.config.listen:
            host, _, port = listen.rpartition(":")
            host = host.strip("[]")
            # At most MAX_HTTP_CONNECTIONS at once (503 beyond): idle clients cannot take the daemon's fds.
            server = _Server(uvicorn.Config(self.app, host=host, port=int(port), log_level="warning",
                                            access_log=False, lifespan="off", timeout_graceful_shutdown=1,
                                            limit_concurrency=MAX_HTTP_CONNECTIONS))  # fmt: skip
            task = asyncio.create_task(server.serve())
            while not server.started:
                if task.done():
                    task.result()  # the bind error
                    raise RuntimeError(f"api: could not listen on {listen}")
                await asyncio.sleep(0.01)
            self._servers.append((server, task))
            log.info("api listening on http://%s/", listen)

    async def stop(self) -> None:
        for server, _task in self._servers:
            server.should_exit = True
        for _server, task in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 3)
        if self._ticker is not None:
            self._ticker.cancel()

    # --- auth -----------------------------------------------------------------------------------

    def _authorised(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        return (
            self.token is not None
            and scheme.lower() == "bearer"
            and hmac.compare_digest(given.strip().encode(), self.token.encode())
        )

    def _read(self, request: Request) -> None:
        if not self.config.public_read and not self._authorised(request):
            raise HTTPException(401, "a bearer token is needed", headers={"WWW-Authenticate": "Bearer"})

    def _write(self, request: Request) -> None:
        if not self._authorised(request):
            raise HTTPException(401, "a valid bearer token is needed for changes",
                                headers={"WWW-Authenticate": "Bearer"})  # fmt: skip

    # --- the app --------------------------------------------------------------------------------

    def _build(self) -> FastAPI:
        app = FastAPI(
            title="wanlb",
            version="1",
            summary="Multi-WAN gateway: status, events, connections, metrics, drain/enable, reload.",
            openapi_url="/api/v1/openapi.json",
            docs_url=None,
            redoc_url=None,
        )
        port = self.port
        read, write = Depends(self._read), Depends(self._write)

        async def status() -> view.Status:
            return port.snapshot(await port.read_counters())

        @app.get("/healthz", summary="Liveness: the daemon's loop answers")
        async def healthz() -> dict[str, Any]:
            return {"ok": True}

        @app.get("/api/v1/status", summary="Everything `wanlb status --json` shows", dependencies=[read])
        async def get_status() -> dict[str, Any]:
            return view.to_json(await status())  # type: ignore[no-any-return]

        @app.get("/api/v1/isps", summary="Every ISP", dependencies=[read])
        async def get_isps() -> list[dict[str, Any]]:
            return [view.to_json(isp) for isp in (await status()).isps]

        @app.get("/api/v1/isps/{name}", summary="One ISP", dependencies=[read],
                 responses={404: {"description": "No such ISP"}})  # fmt: skip
        async def get_isp(name: str) -> dict[str, Any]:
            isp = (await status()).isp(name)
            if isp is None:
                raise HTTPException(404, f"no ISP named {name!r}")
            return view.to_json(isp)  # type: ignore[no-any-return]

        @app.get("/api/v1/events", summary="Recent ISP events, oldest first", dependencies=[read])
        async def get_events(limit: int = Query(200, ge=1, le=1000)) -> list[dict[str, Any]]:
            return [view.to_json(e) for e in port.recent_events()[-limit:]]

        @app.get("/api/v1/connections", summary="Conntrack entries, filtered", dependencies=[read],
                 responses={400: {"description": "Bad filter"}})  # fmt: skip
        async def get_connections(
            isp: str | None = None,
            proto: str | None = None,
            src: str | None = None,
            dst: str | None = None,
            limit: int = Query(100, ge=1, le=MAX_CONNECTIONS),
        ) -> dict[str, Any]:
            return await self._connections(isp, proto, src, dst, limit)

        @app.get(
            "/api/v1/explain",
            summary="Which ISP a NEW connection would take now, and why (`wanlb explain`)",
            dependencies=[read],
            responses={
                400: {"description": "Bad flow, or a name the daemon does not resolve"},
                503: {"description": "The kernel did not answer"},
            },
        )
        async def explain(
            source: str = Query(alias="from", max_length=commands.MAX_ENDPOINT, description="IP[:PORT]"),
            to: str = Query(max_length=commands.MAX_ENDPOINT, description="IP|NAME[:PORT] ([IPv6]:PORT)"),
            proto: str = Query("tcp", max_length=16),
            iif: str | None = Query(None, max_length=16, description="Default: the first LAN interface"),
            dscp: str = Query("cs0", max_length=8),
            mac: str | None = Query(None, max_length=17, description="The client's MAC address"),
        ) -> dict[str, Any]:
            try:
                command = commands.explain_between(source, to, proto, iif, dscp, mac)
            except commands.BadRequest as exc:
                raise HTTPException(400, str(exc)) from None
            reply = await port.submit(command)
            if not reply.get("ok"):
                error = str(reply.get("error", "refused"))
                raise HTTPException(400 if error.startswith("bad request") else 503, error)
            return reply

        @app.get("/api/v1/stream", summary="Server-Sent Events: events, reloads, stats every second",
                 dependencies=[read], response_class=StreamingResponse,
                 responses={200: {"content": {"text/event-stream": {}}}, 400: {"description": "Bad Last-Event-ID"},
                            503: {"description": "Too many"}})  # fmt: skip
        async def stream(request: Request) -> StreamingResponse:
            if len(self.hub.clients) >= MAX_STREAM_CLIENTS:
                raise HTTPException(503, "too many stream clients")
            try:
                queue, backlog = self.hub.subscribe(request.headers.get("last-event-id"))
            except ValueError as exc:
                raise HTTPException(400, str(exc)) from None
            self._ensure_ticker()
            return StreamingResponse(self._events(queue, backlog, request), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})  # fmt: skip

        @app.get("/api/v1/history", summary="Per ISP, a sample every 10 s over the last day", dependencies=[read])
        async def history(since: float = Query(0.0, ge=0, le=1e11, allow_inf_nan=False)) -> Response:
            body = await asyncio.to_thread(_json_bytes, (await port.history(since)).json())
            return Response(body, media_type="application/json")

        @app.post("/api/v1/isps/{name}/disable", summary="Drain an ISP (optionally with a reason, for a time)",
                  dependencies=[write], responses={400: {"description": "Bad reason or seconds"},
                                                   404: {"description": "No such ISP"},
                                                   409: {"description": "Not applied"}})  # fmt: skip
        async def disable(
            name: str,
            reason: str = Query("", max_length=commands.MAX_REASON, description="Shown with the drain"),
            seconds: float | None = Query(None, ge=1, le=commands.MAX_DRAIN_SECONDS, description="Ends it after"),
        ) -> dict[str, Any]:
            try:
                command = commands.drain(name, reason, seconds)
            except commands.BadRequest as exc:
                raise HTTPException(400, str(exc)) from None
            return _answer(await port.submit(command))

        @app.post("/api/v1/isps/{name}/enable", summary="Hand an ISP back to its probes", dependencies=[write],
                  responses={404: {"description": "No such ISP"}, 409: {"description": "Not applied"}})  # fmt: skip
        async def enable(name: str) -> dict[str, Any]:
            return _answer(await port.submit(commands.Enable(name)))

        @app.post("/api/v1/isps/{name}/quota/reset", summary="Start an ISP's data quota count again",
                  dependencies=[write], responses={404: {"description": "No such ISP"},
                                                   409: {"description": "No quota, or not applied"}})  # fmt: skip
        async def quota_reset(name: str) -> dict[str, Any]:
            return _answer(await port.submit(commands.QuotaReset(name)))

        @app.post("/api/v1/reload", summary="Reload the config file", dependencies=[write],
                  responses={409: {"description": "Refused or not applied"}})  # fmt: skip
        async def reload() -> JSONResponse:
            reply = await port.submit(commands.Reload())
            ok = bool(reply.get("ok"))
            return JSONResponse({"ok": ok, "message": reply.get("message" if ok else "error")},
                                status_code=200 if ok else 409)  # fmt: skip

        @app.get("/metrics", summary="Prometheus text exposition", dependencies=[read],
                 response_class=Response, responses={200: {"content": {"text/plain": {}}}})  # fmt: skip
        async def metrics() -> Response:
            counters = await port.read_counters()
            body = port.metrics_text(port.snapshot(counters), counters)
            return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

        web = resources.files("wanlb") / "web"

        @app.get("/", summary="The dashboard", response_class=HTMLResponse)
        async def index() -> HTMLResponse:
            return HTMLResponse((web / "index.html").read_text(encoding="utf-8"))

        app.mount("/static", StaticFiles(directory=str(web)), name="static")
        return app

    async def _events(self, queue: asyncio.Queue[str | None], backlog: list[str],
                      request: Request) -> AsyncIterator[str]:  # fmt: skip
        try:
            yield ": wanlb stream\n\n"
            for message in backlog:  # what it missed while away, before anything new
                yield message
            while True:
                try:
                    message = await asyncio.wait_for(queue.get(), KEEPALIVE)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield ": keepalive\n\n"
                    continue
                if message is None:
                    return
                yield message
        finally:
            self.hub.unsubscribe(queue)

    def _ensure_ticker(self) -> None:
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._tick())

    async def _tick(self) -> None:
        """Once a second while anyone listens: per-ISP connections and rates."""
        while self.hub.clients:
            counters = await self.port.read_counters()
            now = time.monotonic()
            status = self.port.snapshot(counters)
            self.hub.publish("stats", stats_message(status, counters, self.rates, now))
            self.rates = _Rates(now, counters)
            await asyncio.sleep(STATS_INTERVAL)
        self.rates = None

    async def _connections(
        self, isp: str | None, proto: str | None, src: str | None, dst: str | None, limit: int
    ) -> dict[str, Any]:
        from wanlb.ctnetlink.client import Conntrack
        from wanlb.ctnetlink.filters import Filter
        from wanlb.ctnetlink.format import entry_json

        marks, mask = self.port.isp_marks()
        kwargs: dict[str, Any] = {}
        try:
            if isp is not None:
                if isp not in marks:
                    raise ValueError(f"no ISP named {isp!r}")
                kwargs.update(mark=marks[isp], mark_mask=mask)
            if proto is not None:
                kwargs["proto"] = PROTOCOLS[proto] if proto in PROTOCOLS else int(proto)
            if src is not None:
                kwargs["src"] = ipaddress.ip_network(src)
            if dst is not None:
                kwargs["dst"] = ipaddress.ip_network(dst)
            flt = Filter(**kwargs)
        except (ValueError, KeyError) as exc:
            raise HTTPException(400, f"bad filter: {exc}") from None
        names = {mark: name for name, mark in marks.items()}

        def dump() -> tuple[list[dict[str, Any]], bool]:
            out, more = [], False
            own = own_addresses() | self.port.peer_addresses()  # (an HA peer's sync traffic is no LAN client)
            with Conntrack() as ct:
                for entry in ct.dump(flt):
                    if len(out) == limit:
                        more = True
                        break
                    item = entry_json(entry, names.get((entry.mark or 0) & mask))
                    item["from_gateway"] = entry.src in own or ipaddress.ip_address(entry.src).is_loopback
                    out.append(item)
            return out, more

        try:
            # One dump at a time: a burst of requests must not fill the worker threads the daemon's
            # reconciles and flushes need (a dump that timed out keeps its thread until it ends).
            async with asyncio.timeout(CONNECTIONS_TIMEOUT), self._dumps:
                entries, more = await asyncio.to_thread(dump)
        except TimeoutError:
            raise HTTPException(503, "the conntrack dump took too long") from None
        return {"connections": entries, "count": len(entries), "truncated": more}


def own_addresses() -> frozenset[bytes]:
    """This host's addresses (packed), on every interface: WAN, LAN, loopback.  A connection from one of them is
    the gateway's own (its probes, its resolver, a local service), not a LAN client's."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = {a.get("local") or a.get("address") for a in ipr.get_addr()}
    return frozenset(ipaddress.ip_address(a.split("%")[0]).packed for a in found if a)


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _answer(reply: dict[str, Any]) -> dict[str, Any]:
    if not reply.get("ok"):
        error = reply.get("error", "refused")
        raise HTTPException(404 if error.startswith("no ISP named") else 409, error)
    return reply


class _Server(uvicorn.Server):
    """uvicorn in the daemon's loop: the daemon owns the signals (SIGTERM, SIGHUP)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield
