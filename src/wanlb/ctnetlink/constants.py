"""Numbers from linux/netlink.h, linux/netfilter/nfnetlink*.h and nf_conntrack_common.h.

Kept in one place so the codec, the filters and the formatters agree on them; the
names follow the kernel headers so they can be grepped for in the kernel source.
"""

from __future__ import annotations

import socket

from wanlb import protocols

NETLINK_NETFILTER = 12

# netlink message header flags / types
NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_DUMP_INTR = 0x10
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11

# nfnetlink
NFNL_SUBSYS_CTNETLINK = 1
NFNETLINK_V0 = 0
NFNLGRP_CONNTRACK_NEW = 1
NFNLGRP_CONNTRACK_UPDATE = 2
NFNLGRP_CONNTRACK_DESTROY = 3

# cntl_msg_types
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_DELETE = 2
IPCTNL_MSG_CT_GET_STATS_CPU = 4
IPCTNL_MSG_CT_GET_STATS = 5

# ctattr_type
CTA_TUPLE_ORIG = 1
CTA_TUPLE_REPLY = 2
CTA_STATUS = 3
CTA_PROTOINFO = 4
CTA_HELP = 5
CTA_NAT_SRC = 6
CTA_TIMEOUT = 7
CTA_MARK = 8
CTA_COUNTERS_ORIG = 9
CTA_COUNTERS_REPLY = 10
CTA_USE = 11
CTA_ID = 12
CTA_SECMARK = 17
CTA_ZONE = 18
CTA_SECCTX = 19
CTA_TIMESTAMP = 20
CTA_MARK_MASK = 21
CTA_LABELS = 22
CTA_FILTER = 25
CTA_STATUS_MASK = 26

CTA_TUPLE_IP = 1
CTA_TUPLE_PROTO = 2
CTA_TUPLE_ZONE = 3

CTA_IP_V4_SRC = 1
CTA_IP_V4_DST = 2
CTA_IP_V6_SRC = 3
CTA_IP_V6_DST = 4

CTA_PROTO_NUM = 1
CTA_PROTO_SRC_PORT = 2
CTA_PROTO_DST_PORT = 3
CTA_PROTO_ICMP_ID = 4
CTA_PROTO_ICMP_TYPE = 5
CTA_PROTO_ICMP_CODE = 6
CTA_PROTO_ICMPV6_ID = 7
CTA_PROTO_ICMPV6_TYPE = 8
CTA_PROTO_ICMPV6_CODE = 9

CTA_PROTOINFO_TCP = 1
CTA_PROTOINFO_TCP_STATE = 1
CTA_PROTOINFO_SCTP = 3
CTA_PROTOINFO_SCTP_STATE = 1

CTA_COUNTERS_PACKETS = 1
CTA_COUNTERS_BYTES = 2

CTA_TIMESTAMP_START = 1
CTA_TIMESTAMP_STOP = 2

CTA_HELP_NAME = 1
CTA_SECCTX_NAME = 1

CTA_NAT_V4_MINIP = 1
CTA_NAT_V4_MAXIP = 2
CTA_NAT_V6_MINIP = 4
CTA_NAT_V6_MAXIP = 5

CTA_FILTER_ORIG_FLAGS = 1

# kernel-internal CTA_FILTER_F_* bits (net/netfilter/nf_conntrack_netlink.c)
CTA_FILTER_F_IP_SRC = 1 << 0
CTA_FILTER_F_IP_DST = 1 << 1
CTA_FILTER_F_PROTO_NUM = 1 << 3
CTA_FILTER_F_PROTO_SRC_PORT = 1 << 4
CTA_FILTER_F_PROTO_DST_PORT = 1 << 5

# ctattr_stats_cpu / ctattr_stats_global
CTA_STATS_FOUND = 2
CTA_STATS_INVALID = 4
CTA_STATS_INSERT = 8
CTA_STATS_INSERT_FAILED = 9
CTA_STATS_DROP = 10
CTA_STATS_EARLY_DROP = 11
CTA_STATS_ERROR = 12
CTA_STATS_SEARCH_RESTART = 13
CTA_STATS_CLASH_RESOLVE = 14
CTA_STATS_CHAIN_TOOLONG = 15
CTA_STATS_GLOBAL_ENTRIES = 1
CTA_STATS_GLOBAL_MAX_ENTRIES = 2

CPU_STAT_NAMES: dict[int, str] = {
    CTA_STATS_FOUND: "found",
    CTA_STATS_INVALID: "invalid",
    CTA_STATS_INSERT: "insert",
    CTA_STATS_INSERT_FAILED: "insert_failed",
    CTA_STATS_DROP: "drop",
    CTA_STATS_EARLY_DROP: "early_drop",
    CTA_STATS_ERROR: "error",
    CTA_STATS_SEARCH_RESTART: "search_restart",
    CTA_STATS_CLASH_RESOLVE: "clash_resolve",
    CTA_STATS_CHAIN_TOOLONG: "chaintoolong",
}

# enum ip_conntrack_status, in the order conntrack(8) -u accepts them
STATUS_BITS: dict[str, int] = {
    "EXPECTED": 1 << 0,
    "SEEN_REPLY": 1 << 1,
    "ASSURED": 1 << 2,
    "CONFIRMED": 1 << 3,
    "SRC_NAT": 1 << 4,
    "DST_NAT": 1 << 5,
    "SEQ_ADJUST": 1 << 6,
    "SRC_NAT_DONE": 1 << 7,
    "DST_NAT_DONE": 1 << 8,
    "DYING": 1 << 9,
    "FIXED_TIMEOUT": 1 << 10,
    "TEMPLATE": 1 << 11,
    "UNTRACKED": 1 << 12,
    "HELPER": 1 << 13,
    "OFFLOAD": 1 << 14,
    "HW_OFFLOAD": 1 << 15,
}
IPS_SEEN_REPLY = STATUS_BITS["SEEN_REPLY"]
IPS_ASSURED = STATUS_BITS["ASSURED"]
IPS_CONFIRMED = STATUS_BITS["CONFIRMED"]
IPS_OFFLOAD = STATUS_BITS["OFFLOAD"]
IPS_HW_OFFLOAD = STATUS_BITS["HW_OFFLOAD"]

# enum tcp_conntrack, index = kernel value; 9 is SYN_SENT2, which conntrack(8) prints as LISTEN
TCP_STATES: tuple[str, ...] = (
    "NONE",
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
    "TIME_WAIT",
    "CLOSE",
    "SYN_SENT2",  # what conntrack-tools 1.4.7 prints for 9 (older names: LISTEN)
)


def tcp_state_number(name: str) -> int:
    """A TCP state by name, as conntrack --state takes it (ValueError if unknown)."""
    name = name.strip().upper()
    return 9 if name == "LISTEN" else TCP_STATES.index(name)


SCTP_STATES: tuple[str, ...] = (
    "NONE",
    "CLOSED",
    "COOKIE_WAIT",
    "COOKIE_ECHOED",
    "ESTABLISHED",
    "SHUTDOWN_SENT",
    "SHUTDOWN_RECD",
    "SHUTDOWN_ACK_SENT",
    "HEARTBEAT_SENT",
    "HEARTBEAT_ACKED",
)

IPPROTO_ICMP = socket.IPPROTO_ICMP
IPPROTO_TCP = socket.IPPROTO_TCP
IPPROTO_UDP = socket.IPPROTO_UDP
IPPROTO_ICMPV6 = socket.IPPROTO_ICMPV6
IPPROTO_SCTP = 132
IPPROTO_DCCP = 33
IPPROTO_UDPLITE = 136
IPPROTO_GRE = 47
PORT_PROTOS = protocols.PORT_PROTOS
ICMP_PROTOS = protocols.ICMP_PROTOS
PROTO_NAMES: dict[int, str] = protocols.NAMES
PROTO_NUMBERS: dict[str, int] = protocols.NUMBERS

AF_INET = socket.AF_INET
AF_INET6 = socket.AF_INET6
FAMILY_NAMES: dict[int, str] = {AF_INET: "ipv4", AF_INET6: "ipv6"}
FAMILY_NUMBERS: dict[str, int] = {v: k for k, v in FAMILY_NAMES.items()}
