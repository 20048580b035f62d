"""rtnetlink link messages → (name, usable), from hand-built datagrams."""

from __future__ import annotations

import struct

from wanlb.adapters.links import IFF_LOWER_UP, IFF_UP, IFLA_IFNAME, RTM_DELLINK, RTM_NEWLINK, parse_links


def link_msg(kind: int, name: str, flags: int, extra_attr: bool = True) -> bytes:
    attrs = b""
    if extra_attr:  # an attribute before the name (IFLA_MTU), as the kernel sends
        attrs += struct.pack("=HHI", 8, 4, 1500)
    raw = name.encode() + b"\0"
    attr = struct.pack("=HH", 4 + len(raw), IFLA_IFNAME) + raw
    attrs += attr + b"\0" * ((4 - len(attr) % 4) % 4)
    body = struct.pack("=BxHiII", 0, 1, 7, flags, 0xFFFFFFFF) + attrs
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def test_up_with_carrier_is_usable_and_anything_else_is_not() -> None:
    data = (
        link_msg(RTM_NEWLINK, "wan1", IFF_UP | IFF_LOWER_UP)
        + link_msg(RTM_NEWLINK, "wan2", IFF_UP)  # no carrier
        + link_msg(RTM_NEWLINK, "ppp0", 0, extra_attr=False)  # admin down
        + link_msg(RTM_DELLINK, "lte0", IFF_UP | IFF_LOWER_UP)
    )
    assert list(parse_links(data)) == [("wan1", True), ("wan2", False), ("ppp0", False), ("lte0", False)]


def test_truncated_or_foreign_messages_are_skipped() -> None:
    good = link_msg(RTM_NEWLINK, "wan1", IFF_UP | IFF_LOWER_UP)
    route_msg = struct.pack("=IHHII", 20, 24, 0, 0, 0) + b"\0" * 4  # RTM_NEWROUTE
    assert list(parse_links(route_msg + good)) == [("wan1", True)]
    assert list(parse_links(good[:30])) == []
    assert list(parse_links(struct.pack("=IHHII", 0, RTM_NEWLINK, 0, 0, 0))) == []
