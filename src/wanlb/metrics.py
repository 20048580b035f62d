"""Prometheus metrics: what ``wanlb status`` shows, as series a monitoring system can keep and alert on.

Two kinds.  Histograms and event counters (probe RTTs, apply times, transitions, failovers, reloads)
are observed when they happen, by the daemon.  Everything else is read at scrape time from the same
data ``status`` answers with — the daemon's view and our nft table's named counters — so a scrape
and ``wanlb status --json`` taken together agree.  Byte and new-connection totals come from the nft
counters ``isp_<name>_rx/_tx/_new``, which survive reloads and daemon restarts (a counter reset is only
a removal of the ISP or ``stop --cleanup``, which Prometheus' ``rate`` handles).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from wanlb import __version__
from wanlb.view import USABLE, Status

STATES = ("up", "degraded", "down", "disabled")
RTT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
APPLY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

disable_created_metrics()  # no *_created series: they double the output and nobody alerts on them


def family_label(family: int) -> str:
    """An event's family as a label value: "4" or "6" for one family's own health, "all" for an ISP's one
    health covering both (so a dual-stack failover is one series per family, never one event counted twice)."""
    return str(family) if family else "all"


class Metrics:
    """The daemon's registry: observe events as they happen, ``render`` at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.probe_rtt = Histogram(
            "wanlb_isp_probe_rtt_seconds", "Round-trip time of answered health probes.", ["isp", "family"],
            buckets=RTT_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.apply_seconds = Histogram(
            "wanlb_apply_seconds", "Time to converge the kernel (one reconcile pass).",
            buckets=APPLY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.transitions = Counter(
            "wanlb_isp_transitions", "ISP state changes, by address family (4, 6 or all) and the state entered.",
            ["isp", "family", "to"], registry=self.registry,
        )  # fmt: skip
        self.failovers = Counter(
            "wanlb_failovers", "ISPs taken out of service (down or disabled), by address family (4, 6 or all).",
            ["isp", "family"], registry=self.registry,
        )  # fmt: skip
        Info("wanlb_build", "The running wanlb.", registry=self.registry).info({"version": __version__})
        for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):  # what every Python exporter has
            self.registry.register(standard)
        self.roles = Counter(
            "wanlb_ha_role_changes", "This HA node's role changes, by the role entered.", ["role"],
            registry=self.registry,
        )  # fmt: skip
        self.reloads = Counter("wanlb_reloads", "Configuration reloads, by result.", ["result"], registry=self.registry)
        self.suspicions = Counter(
            "wanlb_isp_suspicions", "Passive detection: ISPs suspected, and suspicions a probe round cleared.",
            ["isp", "outcome"], registry=self.registry,
        )  # fmt: skip
        self._state = _StateCollector()
        self.registry.register(self._state)

    def render(self, status: Status, counters: Mapping[str, Mapping[str, int]]) -> bytes:
        """The text exposition for one scrape, from the read model and our named nft counters."""
        self._state.status, self._state.counters = status, counters
        try:
            return generate_latest(self.registry)
        finally:
            self._state.status, self._state.counters = Status(), {}


class _StateCollector(Collector):
    """Gauges and totals read from a status snapshot (set by :meth:`Metrics.render` around each scrape)."""

    def __init__(self) -> None:
        self.status = Status()
        self.counters: Mapping[str, Mapping[str, int]] = {}

    def describe(self) -> Iterator[Metric]:
        return iter(())  # the names are known only at scrape time; nothing to check against at register

    def collect(self) -> Iterator[Metric]:
        status, counters = self.status, self.counters
        conns = status.conn_counts
        up = GaugeMetricFamily("wanlb_isp_up", "1 if the ISP takes new connections' traffic (up or degraded).",
                               labels=["isp"])  # fmt: skip
        state = GaugeMetricFamily("wanlb_isp_state", "1 for the ISP's current state.", labels=["isp", "state"])
        weight = GaugeMetricFamily("wanlb_isp_weight", "Configured weight.", labels=["isp"])
        share = GaugeMetricFamily("wanlb_isp_share_ratio", "Share of new connections (0-1).", labels=["isp"])
        connections = GaugeMetricFamily("wanlb_isp_connections", "Conntrack entries with the ISP's mark.",
                                        labels=["isp"])  # fmt: skip
        new = CounterMetricFamily("wanlb_isp_new_connections", "New connections balanced to the ISP.", labels=["isp"])
        traffic = CounterMetricFamily("wanlb_isp_bytes", "Bytes through the ISP's WAN interface.",
                                      labels=["isp", "interface", "direction"])  # fmt: skip
        info = GaugeMetricFamily("wanlb_isp_info", "1 per ISP, naming its WAN interface (to join with node_exporter's "
                                 "device label).", labels=["isp", "interface"])  # fmt: skip
        loss = GaugeMetricFamily("wanlb_isp_probe_loss_ratio", "Probe loss over the health window (0-1).",
                                 labels=["isp", "family"])  # fmt: skip
        up6 = GaugeMetricFamily("wanlb_isp_ipv6_up", "1 if the ISP takes new IPv6 connections (ISPs carrying IPv6).",
                                labels=["isp"])  # fmt: skip
        for isp in status.isps:
            name = isp.name
            up.add_metric([name], 1.0 if isp.usable else 0.0)
            for s in STATES:
                state.add_metric([name, s], 1.0 if isp.status == s else 0.0)
            weight.add_metric([name], isp.weight)
            share.add_metric([name], isp.share_percent / 100)
            connections.add_metric([name], conns.get(name, 0))
            new.add_metric([name], counters.get(f"isp_{name}_new", {}).get("packets", 0))
            info.add_metric([name, isp.interface], 1.0)
            traffic.add_metric([name, isp.interface, "rx"], counters.get(f"isp_{name}_rx", {}).get("bytes", 0))
            traffic.add_metric([name, isp.interface, "tx"], counters.get(f"isp_{name}_tx", {}).get("bytes", 0))
            if isp.health.monitored:
                loss.add_metric([name, "4"], isp.health.loss_percent / 100)
            if isp.ipv6 is not None:
                up6.add_metric([name], 1.0 if isp.ipv6.status in USABLE else 0.0)
                if isp.ipv6.health is not None and isp.ipv6.health.monitored:
                    loss.add_metric([name, "6"], isp.ipv6.health.loss_percent / 100)
        yield from (up, state, info, weight, share, connections, new, traffic, loss, up6)
        yield from _quota_metrics(status)
        table = status.conntrack
        if table.entries is not None:
            yield GaugeMetricFamily("wanlb_conntrack_entries", "Entries in the conntrack table.", table.entries)
        if table.max is not None:
            yield GaugeMetricFamily("wanlb_conntrack_max", "nf_conntrack_max.", table.max)
        yield CounterMetricFamily(
            "wanlb_events_lost", "Conntrack event losses the kernel reported (ENOBUFS).", status.events_lost
        )
        if status.ha is not None:
            role = GaugeMetricFamily("wanlb_ha_role", "1 for this HA node's current role.", labels=["node", "role"])
            for r in ("master", "backup", "fault"):
                role.add_metric([status.ha.node, r], 1.0 if status.ha.role == r else 0.0)
            yield role
            sync = GaugeMetricFamily("wanlb_ha_sync_link_up", "1 while the sync link is up.", labels=["node"])
            sync.add_metric([status.ha.node], 1.0 if status.ha.sync_link == "up" else 0.0)
            yield sync
            peer = status.ha.peer
            for name, text, value in (
                ("wanlb_ha_peer_up", "1 while the peer's hellos arrive over the sync link.", peer.state == "up"),
                ("wanlb_ha_split_brain", "1 while this node and the peer are both master.", peer.split_brain),
                ("wanlb_ha_config_differences", "Fields the two nodes' configs disagree on (0: they agree).",
                 len(peer.config_differences)),
            ):  # fmt: skip
                gauge = GaugeMetricFamily(name, text, labels=["node"])
                gauge.add_metric([status.ha.node], float(value))
                yield gauge
        hits = CounterMetricFamily("wanlb_rule_hits", "NEW packets matched by each rule.", labels=["rule"])
        for rule in status.rules:
            hits.add_metric([rule.name], rule.hits or 0)
        yield hits


def _quota_metrics(status: Status) -> Iterator[Metric]:
    """The data quotas (ISPs with ``isps[].quota``): the count this cycle, the limit, whether it is reached and
    when the cycle ends (a count's rate against the time left says whether it will be)."""
    used = GaugeMetricFamily("wanlb_isp_quota_used_bytes", "Bytes counted against the ISP's data quota this "
                             "cycle (its WAN, both directions, its probes included).", labels=["isp"])  # fmt: skip
    limit = GaugeMetricFamily("wanlb_isp_quota_limit_bytes", "The ISP's data quota per cycle.", labels=["isp"])
    exceeded = GaugeMetricFamily("wanlb_isp_quota_exceeded", "1 while the count has reached the quota (the ISP is "
                                 "held back from balancing as its at_limit says).", labels=["isp"])  # fmt: skip
    end = GaugeMetricFamily("wanlb_isp_quota_cycle_end_seconds", "When the quota's cycle ends and the count starts "
                            "again (Unix time).", labels=["isp"])  # fmt: skip
    for isp in status.isps:
        if isp.quota is not None:
            used.add_metric([isp.name], isp.quota.used_bytes)
            limit.add_metric([isp.name], isp.quota.limit_bytes)
            exceeded.add_metric([isp.name], 1.0 if isp.quota.exceeded else 0.0)
            end.add_metric([isp.name], isp.quota.cycle_end)
    yield from (used, limit, exceeded, end)
