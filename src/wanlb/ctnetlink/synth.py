"""Synthetic conntrack tables for the integration tests and the benchmark.

``python -m wanlb.ctnetlink.synth COUNT [--mixed]`` fills the current network
namespace's table through batched ctnetlink creates.  Run it only inside a
scratch namespace (``ip netns exec``): the entries describe documentation and
private addresses and no packet is sent.

The default mix is the benchmark's: 2/3 TCP ESTABLISHED, 1/3 UDP, 1 in 64 IPv6,
marks 0x100..0x400 spread evenly (four ISPs under mask 0xff00).  ``--mixed`` adds
what the parity test needs: several TCP states, unreplied entries, ICMP/ICMPv6,
source-NATed entries, zones and unmarked entries.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

from wanlb.ctnetlink import constants as C
from wanlb.ctnetlink.client import Conntrack
from wanlb.ctnetlink.entry import Entry

ISP_MARKS = (0x100, 0x200, 0x300, 0x400)
NAT_ADDR = bytes((198, 51, 100, 1))
_REPLIED = C.IPS_SEEN_REPLY | C.IPS_ASSURED
_TCP_STATES = (1, 3, 3, 3, 4, 7, 8)  # SYN_SENT, ESTABLISHED x3, FIN_WAIT, TIME_WAIT, CLOSE


def _addr(i: int, v6: bool, client: bool) -> bytes:
    if v6:
        return bytes((0xFD, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1 if client else 2)) + i.to_bytes(4, "big")
    if client:
        return bytes((10, 1 + (i >> 16) % 200, (i >> 8) & 255, i & 255))
    return bytes((192, 0, 2, 1 + i % 250))


def entries(count: int, mixed: bool = False) -> Iterator[tuple[Entry, bytes | None]]:
    """(entry, source NAT address or None) pairs with unique tuples."""
    for i in range(count):
        v6 = i % 64 == 63
        family = C.AF_INET6 if v6 else C.AF_INET
        src, dst = _addr(i, v6, True), _addr(i, v6, False)
        kind = i % 3 if not mixed else i % 6
        mark: int | None = ISP_MARKS[i % 4]
        zone = None
        nat = None
        sport = 1024 + (i * 7919) % 64000
        if kind in (0, 1, 3):  # TCP
            proto, state = C.IPPROTO_TCP, 3
            status = _REPLIED
            if mixed:
                state = _TCP_STATES[i % len(_TCP_STATES)]
                status = 0 if state == 1 else _REPLIED
            ports = dict(sport=sport, dport=443, reply_sport=443, reply_dport=sport)
        elif kind in (2, 4):  # UDP
            proto, state, status = C.IPPROTO_UDP, None, (0 if mixed and i % 4 == 0 else _REPLIED)
            ports = dict(sport=sport, dport=53, reply_sport=53, reply_dport=sport)
        else:  # ICMP echo
            proto = C.IPPROTO_ICMPV6 if v6 else C.IPPROTO_ICMP
            state, status = None, 0
            req, rep = (128, 129) if v6 else (8, 0)
            ports = dict(icmp_type=req, icmp_code=0, icmp_id=i & 0xFFFF,
                         reply_icmp_type=rep, reply_icmp_code=0, reply_icmp_id=i & 0xFFFF)  # fmt: skip
        reply_dst = src
        if mixed:
            if i % 10 == 5:
                mark = None  # unmarked
            if i % 17 == 0:
                zone = 1 + i % 3
            if not v6 and proto != C.IPPROTO_ICMP and i % 7 == 2:
                nat, reply_dst = NAT_ADDR, NAT_ADDR
        yield (
            Entry(
                family=family,
                proto=proto,
                src=src,
                dst=dst,
                reply_src=dst,
                reply_dst=reply_dst,
                timeout=3600,
                tcp_state=state,
                status=status,
                mark=mark,
                zone=zone,
                **ports,
            ),
            nat,
        )


def fill(count: int, mixed: bool = False) -> int:
    """Create the entries in the current namespace; returns how many the kernel accepted."""
    created = 0
    with Conntrack() as ct:
        plain = [e for e, nat in entries(count, mixed) if nat is None]
        natted = [e for e, nat in entries(count, mixed) if nat is not None]
        created += ct.create(plain).count(0)
        if natted:
            created += ct.create(natted, nat_src=NAT_ADDR).count(0)
    return created


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("count", type=int)
    parser.add_argument("--mixed", action="store_true")
    args = parser.parse_args(argv)
    created = fill(args.count, args.mixed)
    print(created)
    return 0 if created == args.count else 1


if __name__ == "__main__":
    sys.exit(main())
