"""Filter validation, the userspace predicate, and which kernel dump requests a filter makes."""

from __future__ import annotations

import ipaddress

import pytest

from wanlb.ctnetlink import codec
from wanlb.ctnetlink import constants as C
from wanlb.ctnetlink.entry import Entry
from wanlb.ctnetlink.filters import LEVEL_FAMILY, LEVEL_MARK, Filter

E = Entry(family=2, proto=6, src=bytes([10, 0, 0, 5]), dst=bytes([1, 1, 1, 1]), sport=1000, dport=443,
          tcp_state=3, mark=0x201, zone=None, status=C.IPS_ASSURED | C.IPS_CONFIRMED)  # fmt: skip


def net(s: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(s)


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (Filter(), True),
        (Filter(src=net("10.0.0.0/24")), True),
        (Filter(src=net("10.0.1.0/24")), False),
        (Filter(src=net("fd00::/8")), False),
        (Filter(proto=6, dport=443), True),
        (Filter(proto=17), False),
        (Filter(states=frozenset({3})), True),
        (Filter(states=frozenset({7})), False),
        (Filter(mark=0x200, mark_mask=0xFF00), True),
        (Filter(mark=0x300, mark_mask=0xFF00), False),
        (Filter(zone=0), True),
        (Filter(zone=3), False),
        (Filter(status=C.IPS_ASSURED), True),
        (Filter(family=C.AF_INET6), False),
    ],
)
def test_matches(flt: Filter, expected: bool) -> None:
    assert flt.matches(E) is expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dport": 80},
        {"proto": 1, "sport": 1},
        {"src": net("10.0.0.1/32"), "dst": net("fd00::1/128")},
        {"family": C.AF_INET6, "src": net("10.0.0.1/32")},
        {"proto": 17, "states": frozenset({3})},
        {"mark": 0x1FF, "mark_mask": 0xFF00},
    ],
)
def test_invalid_filters(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        Filter(**kwargs)


def test_state_implies_tcp_and_address_implies_family() -> None:
    f = Filter(states=frozenset({3}), src=net("fd00::1/128"))
    assert (f.proto, f.family) == (C.IPPROTO_TCP, C.AF_INET6)


def test_mark_only() -> None:
    assert Filter(mark=1).mark_only
    assert not Filter(mark=1, proto=6).mark_only
    assert not Filter().mark_only


def _families(flt: Filter, level: int = 2) -> list[tuple[int, set[int]]]:
    out = []
    for req in flt.kernel_requests(level):
        out.append((req[16], {t for t, _p, _n in codec.attrs(req, 20, len(req))}))
    return out


def test_tuple_filter_without_family_is_one_dump_per_family() -> None:
    assert [fam for fam, _ in _families(Filter(proto=6))] == [C.AF_INET, C.AF_INET6]
    assert _families(Filter(proto=6, family=C.AF_INET)) == [(C.AF_INET, {C.CTA_FILTER, C.CTA_TUPLE_ORIG})]


def test_ipv6_addresses_are_not_sent_to_the_kernel() -> None:
    """The kernel's IPv6 tuple filter compare is inverted; only the protocol goes down."""
    ((fam, _types),) = _families(Filter(src=net("fd00::1/128"), proto=6))
    assert fam == C.AF_INET6
    req = next(Filter(src=net("fd00::1/128"), proto=6).kernel_requests())
    flags = [p for t, p, _n in codec.attrs(req, 20, len(req)) if t == C.CTA_FILTER]
    inner = {t: req[p : p + n] for t, p, n in codec.attrs(req, flags[0], flags[0] + 8)}
    assert int.from_bytes(inner[C.CTA_FILTER_ORIG_FLAGS], "little") == C.CTA_FILTER_F_PROTO_NUM


def test_lower_levels_drop_what_old_kernels_reject() -> None:
    f = Filter(mark=0x200, mark_mask=0xFF00, proto=6, family=C.AF_INET)
    assert _families(f, LEVEL_MARK) == [(C.AF_INET, {C.CTA_MARK, C.CTA_MARK_MASK})]
    assert _families(f, LEVEL_FAMILY) == [(C.AF_INET, set())]
    assert _families(Filter()) == [(0, set())]


def test_residual_leaves_family_and_mark_to_the_kernel() -> None:
    f = Filter(mark=0x200, mark_mask=0xFF00, family=C.AF_INET)
    assert f.residual(LEVEL_MARK).empty
    assert f.residual(LEVEL_FAMILY) == Filter(mark=0x200, mark_mask=0xFF00)
    tcp = Filter(proto=6, dport=443, mark=1)
    assert tcp.residual(2) == Filter(proto=6, dport=443)
