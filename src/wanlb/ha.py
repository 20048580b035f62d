"""The HA pair's helpers as configuration text: keepalived (VRRP: who holds the VIPs) and conntrackd (the
connections synced to the other node).  Pure: config in, file text out; the daemon writes them under its
runtime directory and runs the two programs (:mod:`wanlb.ha_supervisor`).

wanlb does not speak VRRP or sync state itself: keepalived and conntrackd are the well-kept tools for that.
What wanlb adds is the glue that makes a takeover keep every connection on its ISP:

* every node SNATs an ISP's connections to that ISP's WAN VIP (render), so the address the servers see does
  not change with the node;
* conntrackd syncs each entry with its ct mark (the ISP) and its NAT binding, so the backup's kernel routes a
  synced connection to the same ISP and rewrites it the same way;
* keepalived's notify FIFO tells the daemon the role; on MASTER the daemon commits conntrackd's external cache into
  the kernel, and until that is done a packet of an old connection must not become a NEW one on a random ISP:
  the ruleset drops NEW TCP packets that are not a SYN (render), and the client's retransmission, after the
  commit, finds its entry (keepalived issues #2254/#2414: the VIPs answer before the notify runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wanlb.config import Config, HaConfig

ROLES = ("master", "backup", "fault")


@dataclass(frozen=True)
class HaPaths:
    """Where one node's helper files live: a directory of its own under the daemon's runtime directory, so two
    wanlb daemons (two lab gateways) never share a lock, socket or pid file."""

    root: Path

    @property
    def keepalived_conf(self) -> Path:
        return self.root / "keepalived.conf"

    @property
    def keepalived_pid(self) -> Path:
        return self.root / "keepalived.pid"

    @property
    def vrrp_pid(self) -> Path:
        return self.root / "vrrp.pid"

    @property
    def notify_fifo(self) -> Path:
        return self.root / "notify.fifo"

    @property
    def conntrackd_conf(self) -> Path:
        return self.root / "conntrackd.conf"

    @property
    def conntrackd_lock(self) -> Path:
        return self.root / "conntrackd.lock"

    @property
    def conntrackd_socket(self) -> Path:
        return self.root / "conntrackd.ctl"


def paths_for(config: Config) -> HaPaths:
    """The node's helper directory beside its control socket, named for it (``/run/wanlb/wanlb.ha/``): one
    per daemon, however many share the directory (two lab gateways do)."""
    socket = Path(config.control.socket)
    return HaPaths(socket.with_name(f"{socket.stem}.ha"))


def vrrp_interface(config: Config) -> str:
    ha = _ha(config)
    return ha.interface or config.lan.interfaces[0]


def keepalived_conf(config: Config, paths: HaPaths) -> str:
    """One VRRPv3 instance carrying every VIP: the LAN VIP on the VRRP interface, each WAN VIP on its ISP's
    interface (``virtual_ipaddress_excluded``: not in the adverts, which carry one address family's few).
    Both nodes start as BACKUP so that ``preempt_delay`` holds a returning node back until it has synced.
    Every state change is written to the daemon's FIFO (``INSTANCE "wanlb" MASTER 150``): no script to run,
    no environment to get right, and the daemon reads it on its loop."""
    ha = _ha(config)
    interface = vrrp_interface(config)
    wans = [f"        {vip.with_prefixlen} dev {config.isp(name).interface}" for name, vip in ha.wan_vips.items()]
    # unicast: adverts to the peer alone, and only the peer's are believed (check_unicast_src)
    unicast = []
    if ha.unicast_peer:
        unicast = [f"    unicast_peer {{\n        {ha.unicast_peer}\n    }}", "    check_unicast_src"]
    lines = [
        f"# Written by wanlb for node {ha.node}: edit wanlb.yaml (ha:) instead; rewritten at every start and reload.",
        "global_defs {",
        f"    router_id wanlb-{ha.node}",
        "    vrrp_version 3",
        "    enable_script_security",
        "    script_user root",
        "    vrrp_garp_master_delay 1",
        "    vrrp_garp_master_repeat 3",
        f"    notify_fifo {paths.notify_fifo}",
        "}",
        "vrrp_instance wanlb {",
        "    state BACKUP",
        f"    interface {interface}",
        f"    virtual_router_id {ha.vrid}",
        f"    priority {ha.priority}",
        f"    advert_int {_seconds(ha.advert_interval)}",
        f"    preempt_delay {_seconds(ha.preempt_delay)}",
        *unicast,
        "    virtual_ipaddress {",
        f"        {ha.lan_vip.with_prefixlen} dev {interface}",
        "    }",
        *(["    virtual_ipaddress_excluded {", *wans, "    }"] if wans else []),
        "}",
    ]
    return "\n".join(lines) + "\n"


def conntrackd_conf(config: Config, paths: HaPaths) -> str:
    """FTFW over the sync link (reliable: lost messages are resent), with an external cache that the new primary
    commits into its kernel; reliable netlink events so no change goes unsynced under load.  Connections of the
    node itself and of the sync link are not synced."""
    ha = _ha(config)
    sync = ha.sync
    ignored = sorted({"127.0.0.1", str(sync.address), str(sync.peer)})
    lines = [
        f"# Written by wanlb for node {ha.node}: edit wanlb.yaml (ha:) instead; rewritten at every start and reload.",
        "Sync {",
        "    Mode FTFW {",
        "        DisableExternalCache Off",
        "        CommitTimeout 1800",
        "        PurgeTimeout 5",
        "    }",
        "    UDP {",
        f"        IPv4_address {sync.address}",
        f"        IPv4_Destination_Address {sync.peer}",
        f"        Port {sync.port}",
        f"        Interface {sync.interface}",
        "        SndSocketBuffer 1249280",
        "        RcvSocketBuffer 1249280",
        "        Checksum on",
        "    }",
        "}",
        "General {",
        "    Systemd off",
        "    HashSize 32768",
        "    HashLimit 131072",
        "    LogFile off",
        "    Syslog off",
        f"    LockFile {paths.conntrackd_lock}",
        "    UNIX {",
        f"        Path {paths.conntrackd_socket}",
        "    }",
        "    NetlinkBufferSize 2097152",
        "    NetlinkBufferSizeMaxGrowth 8388608",
        "    NetlinkEventsReliable On",
        "    Filter From Userspace {",
        "        Protocol Accept {",
        "            TCP",
        "            UDP",
        "            ICMP",
        "        }",
        "        Address Ignore {",
        *(f"            IPv4_address {a}" for a in ignored),
        "        }",
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def role_commands(role: str) -> list[list[str]]:
    """conntrackd's steps on a role change (its primary-backup.sh), as arguments after ``-C CONF``:
    MASTER: commit the external cache (the peer's connections) into the kernel, flush the caches, resync the
    internal cache from the kernel and send it all to the peer; BACKUP: shorten the kernel's timers of the
    entries the old role held, ask the peer for a full resync; FAULT: shorten the timers."""
    if role == "master":
        return [["-c"], ["-f"], ["-R"], ["-B"]]
    if role == "backup":
        return [["-t"], ["-n"]]
    return [["-t"]]


def _ha(config: Config) -> HaConfig:
    if config.ha is None:
        raise ValueError("the config has no ha section")
    return config.ha


def _seconds(value: float) -> str:
    """keepalived's seconds: ``0.1``, ``1``, ``5``."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def parse_notify(line: str) -> str | None:
    """The role in one line keepalived wrote to the FIFO (``INSTANCE "wanlb" MASTER 150``); None for lines about
    anything else (groups, other instances, STOP: keepalived is ending, its exit is seen anyway)."""
    words = line.split()
    if len(words) >= 3 and words[0] == "INSTANCE" and words[1] == '"wanlb"' and words[2].lower() in ROLES:
        return words[2].lower()
    return None
