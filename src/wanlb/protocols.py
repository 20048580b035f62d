"""The one table of IP protocol names and numbers: config rules, nft rendering, the conntrack tools and the API
all read protocols from here (as conntrack(8) and nft spell them)."""

from __future__ import annotations

NAMES: dict[int, str] = {
    6: "tcp",
    17: "udp",
    1: "icmp",
    58: "icmpv6",
    132: "sctp",
    33: "dccp",
    136: "udplite",
    47: "gre",
    50: "esp",
    51: "ah",
}
NUMBERS: dict[str, int] = {name: number for number, name in NAMES.items()}
PORT_PROTOS = frozenset({6, 17, 132, 33, 136})  # protocols with ports (nft's th sport/dport; conntrack's tuples)
ICMP_PROTOS = frozenset({1, 58})
