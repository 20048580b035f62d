"""Traffic generators that run inside a lab client namespace (stdlib only); results go to stdout as JSON.

* `http` (`python -m wanlb.lab.traffic http --connections N --parallel P`): N fresh TCP connections, each
  one HTTP GET to the lab's HTTP server, which answers with the source address it saw. Output:
  `{"sources": {"100.64.1.2": 37, ...}, "failed": 0, "errors": {}, "elapsed": 0.4}`.
* `pace` (`python -m wanlb.lab.traffic pace --every 0.02 --timeout 1`): a fresh connection (one GET) every
  `--every` seconds, whether or not earlier ones finished, until `--duration` or SIGTERM/SIGINT. Output:
  `{"connections": [[start, seconds_or_null, src_or_error], ...]}` with `start` in wall-clock seconds, so
  a failover can be timed against events recorded by other processes.
* `stream` (`python -m wanlb.lab.traffic stream [--duration S]`): one long-lived connection to the stream
  server, checking every 8-byte counter follows the previous one, until the duration ends, SIGTERM/SIGINT,
  or the stream breaks or stalls. Output: `{"src": ..., "counters": n, "ok": true, "error": null, "max_gap": s}`
  (`max_gap`: the longest wait for data, in seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import signal
import sys
import time
from typing import Any

from wanlb.lab.servers import COUNTER_SIZE, parse_addr
from wanlb.lab.topology import DNS_ADDR, DNS_PORT, HTTP_ADDR, HTTP_PORT, STREAM_ADDR, STREAM_PORT


async def _one_get(host: str, port: int, timeout: float) -> str:
    """Open a connection, GET /, return the `src` the server reports."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            response = await reader.read()
        finally:
            writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.0 200"):
        raise ValueError(f"bad response {head[:40]!r}")
    return str(json.loads(body)["src"])


async def run_http(host: str, port: int, connections: int, parallel: int, timeout: float) -> dict[str, Any]:
    """Run `connections` GETs with at most `parallel` in flight; count the sources the server saw."""
    sources: collections.Counter[str] = collections.Counter()
    errors: collections.Counter[str] = collections.Counter()
    sem = asyncio.Semaphore(max(1, parallel))

    async def one() -> None:
        async with sem:
            try:
                sources[await _one_get(host, port, timeout)] += 1
            except (OSError, TimeoutError, ValueError, KeyError) as exc:
                errors[type(exc).__name__] += 1

    start = time.monotonic()
    await asyncio.gather(*(one() for _ in range(connections)))
    return {
        "sources": dict(sources),
        "failed": sum(errors.values()),
        "errors": dict(errors),
        "elapsed": round(time.monotonic() - start, 3),
    }


def _stop_event(duration: float) -> asyncio.Event:
    """Set on SIGTERM/SIGINT, or after `duration` seconds if that is positive."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if duration > 0:
        loop.call_later(duration, stop.set)
    return stop


async def run_pace(host: str, port: int, every: float, timeout: float, duration: float) -> dict[str, Any]:
    """One connection every `every` seconds; record when each started and how it ended."""
    records: list[list[Any]] = []
    stop = _stop_event(duration)

    async def one(record: list[Any]) -> None:
        start = time.monotonic()
        try:
            record[2] = await _one_get(host, port, timeout)
            record[1] = round(time.monotonic() - start, 4)
        except (OSError, TimeoutError, ValueError, KeyError) as exc:
            record[2] = type(exc).__name__

    tasks = []
    next_at = time.monotonic()
    while not stop.is_set():
        record: list[Any] = [round(time.time(), 4), None, None]
        records.append(record)
        tasks.append(asyncio.create_task(one(record)))
        next_at += every
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, next_at - time.monotonic())):
                await stop.wait()
    await asyncio.gather(*tasks)
    return {"connections": records}


async def run_stream(host: str, port: int, duration: float, stall: float) -> dict[str, Any]:
    """Follow the counter stream; report whether it stayed intact and how far it got."""
    result: dict[str, Any] = {"src": None, "counters": 0, "ok": False, "error": None, "max_gap": 0.0}
    stop = _stop_event(duration)

    async def follow() -> None:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), stall)
        try:
            header = await asyncio.wait_for(reader.readline(), stall)
            result["src"] = json.loads(header)["src"]
            expected = 0
            last = time.monotonic()
            while True:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the cancel
                # that ends a successful run, and the follower would read forever.
                async with asyncio.timeout(stall):
                    data = await reader.readexactly(COUNTER_SIZE * 64)
                now = time.monotonic()  # the longest wait for data: a failover's or a takeover's gap
                result["max_gap"], last = max(result["max_gap"], round(now - last, 3)), now
                for off in range(0, len(data), COUNTER_SIZE):
                    value = int.from_bytes(data[off : off + COUNTER_SIZE], "big")
                    if value != expected:
                        raise ValueError(f"counter {value} where {expected} was due")
                    expected += 1
                result["counters"] = expected
        finally:
            writer.close()

    task = asyncio.create_task(follow())
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:  # the stream ended by itself: that is always a failure
        exc = task.exception()
        if isinstance(exc, TimeoutError):
            result["error"] = f"stalled: no data for {stall} s"
        else:
            result["error"] = f"{type(exc).__name__}: {exc}" if exc else "stream ended"
    else:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        result["ok"] = result["src"] is not None
        if not result["ok"]:
            result["error"] = "stopped before the stream started"
    stopper.cancel()
    return result


async def run_udp(host: str, port: int, every: float, duration: float, stall: float) -> dict[str, Any]:
    """One UDP flow (one socket, one 5-tuple, one conntrack entry): a DNS query every ``every`` seconds to the
    lab's DNS server; ``ok`` unless no answer came for ``stall`` seconds. ``max_gap``: the longest wait for an
    answer; ``sport``: the flow's source port (to find its entry)."""
    loop = asyncio.get_running_loop()
    answers: asyncio.Queue[float] = asyncio.Queue()

    class Flow(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            answers.put_nowait(time.monotonic())

    transport, _ = await loop.create_datagram_endpoint(Flow, remote_addr=(host, port))
    result: dict[str, Any] = {"sport": transport.get_extra_info("sockname")[1], "sent": 0, "answered": 0,
                              "max_gap": 0.0, "ok": False, "error": None}  # fmt: skip
    query = bytes.fromhex("abcd01000001000000000000") + b"\x03lab\x00\x00\x01\x00\x01"  # A? lab.
    stop = _stop_event(duration)

    async def send() -> None:
        while not stop.is_set():
            transport.sendto(query)
            result["sent"] += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every):
                    await stop.wait()

    sender = asyncio.create_task(send())
    last = time.monotonic()
    try:
        while not stop.is_set():
            try:
                async with asyncio.timeout(stall):
                    at = await answers.get()
            except TimeoutError:
                if not stop.is_set():  # (once stopped, no more queries go out: no answer is due)
                    result["error"] = f"no answer for {stall} s"
                break
            result["answered"] += 1
            result["max_gap"], last = max(result["max_gap"], round(at - last, 3)), at
        result["ok"] = result["error"] is None and result["answered"] > 0
    finally:
        stop.set()
        await sender
        transport.close()
    return result


def _addr(text: str) -> tuple[str, int]:
    return parse_addr(text)  # ADDR:PORT or [IPV6]:PORT


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m wanlb.lab.traffic`."""
    parser = argparse.ArgumentParser(prog="python -m wanlb.lab.traffic", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    http = sub.add_parser("http", help="many short connections")
    http.add_argument("--target", type=_addr, default=(HTTP_ADDR, HTTP_PORT))
    http.add_argument("--connections", type=int, default=100)
    http.add_argument("--parallel", type=int, default=32)
    http.add_argument("--timeout", type=float, default=2.0, help="per connection, seconds")
    pace = sub.add_parser("pace", help="a new connection at a fixed rate, each one timed")
    pace.add_argument("--target", type=_addr, default=(HTTP_ADDR, HTTP_PORT))
    pace.add_argument("--every", type=float, default=0.02, help="seconds between connection starts")
    pace.add_argument("--timeout", type=float, default=1.0, help="a connection not done by then failed")
    pace.add_argument("--duration", type=float, default=0.0, help="seconds; 0 = until SIGTERM")
    stream = sub.add_parser("stream", help="one long-lived, verified connection")
    stream.add_argument("--target", type=_addr, default=(STREAM_ADDR, STREAM_PORT))
    stream.add_argument("--duration", type=float, default=0.0, help="seconds; 0 = until SIGTERM")
    stream.add_argument("--stall", type=float, default=5.0, help="fail after this long without data")
    udp = sub.add_parser("udp", help="one long-lived UDP flow (DNS queries from one socket)")
    udp.add_argument("--target", type=_addr, default=(DNS_ADDR, DNS_PORT))
    udp.add_argument("--every", type=float, default=0.02, help="seconds between queries")
    udp.add_argument("--duration", type=float, default=0.0, help="seconds; 0 = until SIGTERM")
    udp.add_argument("--stall", type=float, default=3.0, help="fail after this long without an answer")
    args = parser.parse_args(argv)
    if args.mode == "http":
        result = asyncio.run(run_http(*args.target, args.connections, args.parallel, args.timeout))
    elif args.mode == "pace":
        result = asyncio.run(run_pace(*args.target, args.every, args.timeout, args.duration))
    elif args.mode == "udp":
        result = asyncio.run(run_udp(*args.target, args.every, args.duration, args.stall))
    else:
        result = asyncio.run(run_stream(*args.target, args.duration, args.stall))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
