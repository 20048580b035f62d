"""What the two nodes of an HA pair tell each other over the sync link, and what this node concludes from it:
whether the peer is there, whether both hold the VIPs at once (split brain), and whether the two configs agree
on what a synced connection means (docs/ha.md).

keepalived's adverts say only who has the higher priority, and conntrackd's messages carry connections, not
configs.  Yet a connection synced from the peer is routed by its ct mark: if the peer gave ISP ``b`` mark
0x200 and this node gives it 0x300, every synced connection of ``b`` would leave by the wrong ISP after a
takeover.  So each daemon sends a small hello (a JSON datagram, at most :data:`MAX_HELLO` bytes) to the peer's
sync address every :data:`HELLO_INTERVAL` seconds, and on every role change at once: its node name, its role
and the fields that must agree (:func:`agreement`).  The sync link is the channel because it is the one a LAN
partition does not cut — a split brain is both nodes master because their adverts no longer meet, and only a
second path can tell them so.

Pure: the tracker's methods take the time and return events as data; the daemon owns the socket.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from wanlb.config import Config
from wanlb.fleet import Event

HELLO_PORT_OFFSET = 1
"""The hello goes to the sync link's port + 1 (conntrackd has the port itself)."""
HELLO_INTERVAL = 0.5
PEER_TIMEOUT = 2.0
"""Four missed hellos and the peer counts as lost (the sync link is down, or its daemon is)."""
MAX_HELLO = 4096
_MAX_FIELDS = 200
_MAX_TEXT = 200
_NODE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_ROLES = ("master", "backup", "fault", "")  # "": keepalived has not said yet


class HelloError(ValueError):
    """A datagram that is not a valid hello: it is ignored (and counted), it changes nothing."""


@dataclass(frozen=True)
class Hello:
    node: str
    role: str
    priority: int
    agree: Mapping[str, str]
    """The fields both nodes' configs must agree on (:func:`agreement`)."""


def agreement(config: Config) -> dict[str, str]:
    """What both nodes must have alike for a synced connection to mean the same on either: each ISP's mark,
    routing table and WAN VIP (the mark routes it, the VIP is its SNAT source), the mark mask, and the VRRP
    instance (id, LAN VIP, advert interval).  Marks and tables are explicit in an HA config (the check asks for
    them), so the config alone says them."""
    ha = config.ha
    if ha is None:
        raise ValueError("the config has no ha section")
    fields = {
        "mark_mask": f"{config.mark_mask:#x}",
        "vrid": str(ha.vrid),
        "lan_vip": ha.lan_vip.with_prefixlen,
        "advert_interval": f"{ha.advert_interval:g}s",
        "sync port": str(ha.sync.port),
    }
    for isp in config.isps:
        vip = ha.wan_vips.get(isp.name)
        mark = f"{isp.mark:#x}" if isp.mark is not None else "allocated"
        fields[f"isp {isp.name}"] = (
            f"mark {mark}, table {isp.table or 'allocated'}, wan vip {vip.with_prefixlen if vip else 'none'}"
        )
    return fields


def differences(mine: Mapping[str, str], theirs: Mapping[str, str], peer: str) -> tuple[str, ...]:
    """Each field that differs, in words: ``isp b: mark 0x200, … here; mark 0x300, … on gw2``."""
    out = []
    for key in sorted(set(mine) | set(theirs)):
        here, there = mine.get(key), theirs.get(key)
        if here == there:
            continue
        if there is None:
            out.append(f"{key}: only here ({here})")
        elif here is None:
            out.append(f"{key}: only on {peer} ({there})")
        else:
            out.append(f"{key}: {here} here; {there} on {peer}")
    return tuple(out)


def pair_problems(mine: Config, theirs: Config) -> tuple[str, ...]:
    """What keeps two configs from being the two nodes of one pair (``wanlb check --peer``): the agreement's
    differences, and names, priorities and sync addresses that must differ or mirror."""
    if mine.ha is None or theirs.ha is None:
        return ("both configs need an ha section",)
    a, b = mine.ha, theirs.ha
    problems = list(differences(agreement(mine), agreement(theirs), b.node))
    if a.node == b.node:
        problems.append(f"both nodes are named {a.node}")
    if a.priority == b.priority:
        problems.append(f"both nodes have priority {a.priority}: give the preferred primary the higher one")
    if (a.sync.address, a.sync.peer) != (b.sync.peer, b.sync.address):
        problems.append(f"sync: {a.sync.address} → {a.sync.peer} here; {b.sync.address} → {b.sync.peer} on "
                        f"{b.node} (each node's peer must be the other's address)")  # fmt: skip
    return tuple(problems)


def encode(hello: Hello) -> bytes:
    data = {"v": 1, "node": hello.node, "role": hello.role, "priority": hello.priority, "agree": dict(hello.agree)}
    raw = json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
    if len(raw) > MAX_HELLO:
        raise HelloError(f"hello of {len(raw)} bytes is over {MAX_HELLO}: too many ISPs for one datagram")
    return raw


def decode(raw: bytes) -> Hello:
    """A hello from its bytes, every field checked: size, types, the node name, the role, the field count."""
    if len(raw) > MAX_HELLO:
        raise HelloError(f"{len(raw)} bytes, over {MAX_HELLO}")
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HelloError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("v") != 1:
        raise HelloError("not a version 1 hello")
    node, role, priority, agree = data.get("node"), data.get("role"), data.get("priority"), data.get("agree")
    if not isinstance(node, str) or not _NODE.match(node):
        raise HelloError(f"bad node name {node!r:.40}")
    if role not in _ROLES:
        raise HelloError(f"bad role {role!r:.40}")
    if type(priority) is not int or not 0 <= priority <= 255:
        raise HelloError(f"bad priority {priority!r:.40}")
    if not isinstance(agree, dict) or len(agree) > _MAX_FIELDS:
        raise HelloError("bad agreement fields")
    for key, value in agree.items():
        if not isinstance(value, str) or len(key) > _MAX_TEXT or len(value) > _MAX_TEXT:
            raise HelloError(f"bad agreement field {key!r:.40}")
    return Hello(node, role, priority, agree)


@dataclass
class PeerTracker:
    """This node's view of its peer, from the hellos it hears.  Each method returns the events of what changed:
    the peer heard or lost, a split brain starting or ending, the configs starting or ceasing to differ."""

    node: str
    interface: str
    hello: Hello | None = None
    heard_at: float | None = None  # monotonic
    split_brain: bool = False
    mismatch: tuple[str, ...] = ()
    bad_hellos: int = 0
    last_bad: str | None = None
    _up: bool = field(default=False, repr=False)

    def heard(self, hello: Hello, now: float, wall: float, role: str, mine: Mapping[str, str]) -> list[Event]:
        events: list[Event] = []
        if hello.node == self.node:
            return self.rejected(f"a hello from a node named {hello.node} like this one")
        self.hello, self.heard_at = hello, now
        if not self._up:
            self._up = True
            events.append(self._event(wall, "peer", "up", "lost", f"heard {hello.node} ({hello.role or 'starting'})"))
        mismatch = differences(mine, hello.agree, hello.node)
        if mismatch != self.mismatch:
            old = "differs" if self.mismatch else "agrees"
            self.mismatch = mismatch
            new = "differs" if mismatch else "agrees"
            why = "; ".join(mismatch) if mismatch else f"the config agrees with {hello.node}'s"
            events.append(self._event(wall, "config", new, old, why))
        return events + self.tick(now, wall, role)

    def rejected(self, why: str) -> list[Event]:
        self.bad_hellos += 1
        self.last_bad = why
        return []

    def tick(self, now: float, wall: float, role: str) -> list[Event]:
        """The peer lost when it has been silent too long; split brain while both say master."""
        events: list[Event] = []
        if self._up and not self.up(now):
            self._up = False
            silent = now - (self.heard_at or now)
            name = self.hello.node if self.hello else "the peer"
            events.append(self._event(wall, "peer", "lost", "up", f"nothing from {name} for {silent:.1f} s"))
        split = role == "master" and self.up(now) and self.hello is not None and self.hello.role == "master"
        if split != self.split_brain:
            self.split_brain = split
            peer = self.hello.node if self.hello else "the peer"
            if split:
                why = f"{peer} is master too: both hold the VIPs (VRRP adverts do not reach each other)"
            else:
                why = f"{peer} is {self.hello.role if self.hello and self.up(now) else 'not heard'}, this node {role}"
            events.append(self._event(wall, "split-brain", "started" if split else "ended",
                                      "ended" if split else "started", why))  # fmt: skip
        return events

    def up(self, now: float) -> bool:
        return self.heard_at is not None and now - self.heard_at <= PEER_TIMEOUT

    def _event(self, wall: float, event: str, status: str, old: str, why: str) -> Event:
        return Event(wall, "", event, status, old, why, self.interface)
