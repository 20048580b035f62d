"""A minimal ICMP echo client (raw socket, so root), because the lab must not depend on iputils.

Usage: python -m wanlb.lab.ping ADDR [--count N] [--timeout S] [--source ADDR]
Prints `{"sent": N, "received": R}`; exit status 0 if any reply came back, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import sys
import time

from wanlb.health.probes import echo_request, parse_echo_reply


def ping(addr: str, count: int = 1, timeout: float = 1.0, source: str | None = None) -> int:
    """Send `count` echo requests (one per timeout window at most); return how many got a reply."""
    ident = os.getpid() & 0xFFFF
    received = 0
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        if source:
            sock.bind((source, 0))
        for seq in range(1, count + 1):
            sock.sendto(echo_request(ident, seq, b"wanlb-lab"), (addr, 0))
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0:
                if not select.select([sock], [], [], left)[0]:
                    break
                data, (peer, _) = sock.recvfrom(2048)
                if parse_echo_reply(data) == (ident, seq) and peer == addr:
                    received += 1
                    break
    return received


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m wanlb.lab.ping`."""
    parser = argparse.ArgumentParser(prog="python -m wanlb.lab.ping", description=__doc__.split("\n")[0])
    parser.add_argument("addr")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1.0)
    parser.add_argument("--source")
    args = parser.parse_args(argv)
    received = ping(args.addr, args.count, args.timeout, args.source)
    print(json.dumps({"sent": args.count, "received": received}))
    sys.exit(0 if received else 1)


if __name__ == "__main__":
    main()
