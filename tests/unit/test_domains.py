"""Destination domains: the pure table (due, answers, failures, elements and their timeouts, floors and
caps, last good addresses kept), name validation, ``resolve`` against a fake DNS server on loopback
(answers, caps, TTLs, every kind of failure) and the watcher (survives a failing resolution, is
cancellable while a query hangs, hands elements on only when they change)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, ip_address

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wanlb.domains import (
    BACKSTOP,
    CONCURRENCY,
    REFRESH_AT,
    Address,
    DomainTable,
    DomainWatcher,
    Elements,
    NoRecords,
    ResolveError,
    ResolverSettings,
    resolve,
    validate_name,
)

A, B, C = IPv4Address("192.0.2.1"), IPv4Address("192.0.2.2"), IPv4Address("198.51.100.7")
SETTINGS = ResolverSettings(min_ttl=60, max_ttl=3600, retry=10, max_addresses=3)
NAMES = ("video.example", "cdn.example", "mail.example")


# --- the table ---------------------------------------------------------------------------------------


def test_every_new_name_is_due_and_nothing_is_held() -> None:
    table = DomainTable(["Video.Example.", "video.example", "cdn.example"], SETTINGS)
    assert table.names == ("video.example", "cdn.example")
    assert table.due(0.0) == ["video.example", "cdn.example"]
    assert table.next_wakeup(0.0) == 0.0
    assert table.elements(0.0) == {}
    assert {s["state"] for s in table.status().values()} == {"pending"}


def test_a_name_is_due_again_at_80_percent_of_its_ttl() -> None:
    table = DomainTable(["video.example"], SETTINGS)
    table.succeeded("video.example", [B, A, A], 100, now=1000.0)
    assert table.addresses("video.example") == (A, B)
    assert table.due(1079.9) == []
    assert table.next_wakeup(1000.0) == pytest.approx(80.0)
    assert table.due(1080.0) == ["video.example"]


@pytest.mark.parametrize(("ttl", "effective"), [(0, 60), (59, 60), (61, 61), (10**9, 3600), (math.nan, 60)])
def test_ttl_is_clamped_to_the_floor_and_the_cap(ttl: float, effective: float) -> None:
    table = DomainTable(["video.example"], SETTINGS)
    table.succeeded("video.example", [A], ttl, now=0.0)
    assert table.status()["video.example"]["ttl"] == effective
    assert table.next_wakeup(0.0) == pytest.approx(REFRESH_AT * effective)
    assert table.elements(0.0) == {A: math.ceil(effective + table.grace)}


def test_elements_outlive_a_refresh_in_flight() -> None:
    table = DomainTable(NAMES, SETTINGS)
    table.succeeded("video.example", [A], 60, now=0.0)
    refresh_done = REFRESH_AT * 60 + 2 * (SETTINGS.timeout + BACKSTOP)  # queued behind a full round, then its own
    assert table.elements(0.0)[A] > refresh_done


def test_a_failure_keeps_the_last_good_addresses_alive_and_records_the_error() -> None:
    table = DomainTable(["video.example"], SETTINGS)
    table.succeeded("video.example", [A, B], 60, now=0.0)
    first = table.elements(0.0)
    table.failed("video.example", "video.example: no answer within 2s", now=50.0)
    assert table.error("video.example") == "video.example: no answer within 2s"
    status = table.status()["video.example"]
    assert status["state"] == "stale"
    assert status["addresses"] == ["192.0.2.1", "192.0.2.2"]
    assert (status["last_success"], status["last_failure"]) == (0.0, 50.0)
    # Restated for another TTL from the failure: later than the answer alone would have kept them.
    assert table.elements(50.0) == {A: math.ceil(60 + table.grace), B: math.ceil(60 + table.grace)}
    assert 50.0 + table.elements(50.0)[A] > first[A]
    # Failing for hours: still held, retried every `retry` seconds.
    for now in range(60, 4 * 3600, 10):
        assert table.due(now) == ["video.example"]
        table.failed("video.example", "still failing", now=float(now))
        assert set(table.elements(float(now))) == {A, B}
        assert table.due(now + 9.9) == []


def test_a_name_that_never_resolved_has_no_elements_and_is_retried() -> None:
    table = DomainTable(["video.example"], SETTINGS)
    table.failed("video.example", "video.example: no such domain (NXDOMAIN)", now=5.0)
    assert table.elements(5.0) == {}
    assert table.status()["video.example"]["state"] == "failed"
    assert table.due(14.9) == []
    assert table.due(15.0) == ["video.example"]


def test_a_new_answer_replaces_the_addresses_and_clears_the_failure() -> None:
    table = DomainTable(["video.example"], SETTINGS)
    table.succeeded("video.example", [A, B], 60, now=0.0)
    table.failed("video.example", "timeout", now=48.0)
    table.succeeded("video.example", [C], 300, now=58.0)
    assert set(table.elements(58.0)) == {C}
    assert table.error("video.example") is None
    status = table.status()["video.example"]
    assert (status["state"], status["ttl"], status["error"]) == ("ok", 300, "timeout")  # the last error stays shown


def test_an_empty_answer_counts_as_a_failure() -> None:
    table = DomainTable(["video.example"], SETTINGS)
    table.succeeded("video.example", [A], 60, now=0.0)
    table.succeeded("video.example", [], 60, now=48.0)
    assert table.status()["video.example"]["state"] == "stale"
    assert set(table.elements(48.0)) == {A}


def test_addresses_are_capped_and_shared_ones_take_the_longest_timeout() -> None:
    table = DomainTable(NAMES, SETTINGS)
    many = [IPv4Address(f"203.0.113.{i}") for i in range(10, 0, -1)]
    table.succeeded("video.example", many, 60, now=0.0)
    assert table.addresses("video.example") == tuple(sorted(many)[:3])
    table.succeeded("cdn.example", [many[-1]], 600, now=0.0)
    assert table.elements(0.0)[many[-1]] == math.ceil(600 + table.grace)


def test_status_is_json() -> None:
    table = DomainTable(NAMES, SETTINGS)
    table.succeeded("video.example", [A], 60, now=1.5)
    table.failed("cdn.example", "cdn.example: no such domain (NXDOMAIN)", now=2.5)
    assert json.loads(json.dumps(table.status()))["cdn.example"]["error"].endswith("(NXDOMAIN)")


def test_an_error_is_kept_as_one_short_line() -> None:
    table = DomainTable(["video.example"], SETTINGS)
    table.failed("video.example", "bad\nline\x00" + "x" * 1000, now=0.0)
    error = table.error("video.example")
    assert error is not None and "\n" not in error and "\x00" not in error and len(error) <= 300


def test_without_names_nothing_is_ever_due() -> None:
    assert DomainTable([], SETTINGS).next_wakeup(0.0) == math.inf


addresses = st.builds(IPv4Address, st.integers(0, 2**32 - 1))
events = st.tuples(
    st.booleans(),
    st.sampled_from(NAMES),
    st.lists(addresses, max_size=6),
    st.integers(0, 2**31),
    st.floats(0, 200, allow_nan=False),
)


@given(st.lists(events, max_size=40))
def test_table_invariants(steps: list[tuple[bool, str, list[IPv4Address], int, float]]) -> None:
    """Whatever the answers and failures: the set holds exactly every name's last good addresses, timeouts
    are whole seconds within bounds, something is due at the wakeup, and a name's elements outlive its
    next refresh even if that refresh waits a whole round."""
    table = DomainTable(NAMES, SETTINGS)
    now = 0.0
    good: dict[str, set[IPv4Address]] = {}
    longest = max(SETTINGS.max_ttl, SETTINGS.retry) + table.grace
    for ok, name, found, ttl, step in steps:
        now += step
        if ok and found:
            table.succeeded(name, found, ttl, now)
            good[name] = set(sorted(set(found))[: SETTINGS.max_addresses])
        else:
            table.failed(name, "failed", now)
        elements = table.elements(now)
        assert set(elements) == set().union(*good.values())
        assert all(isinstance(t, int) and 1 <= t <= math.ceil(longest) for t in elements.values())
        wakeup = table.next_wakeup(now)
        assert wakeup >= 0 and table.due(now + wakeup)
        for held, status in ((good.get(n, set()), table.status()[n]) for n in NAMES):
            if status["state"] == "ok":
                next_query = status["last_success"] + REFRESH_AT * status["ttl"]
            elif status["state"] == "stale":
                next_query = status["last_failure"] + SETTINGS.retry
            else:
                continue
            if next_query >= now:  # not overdue (a stalled watcher is not this table's concern)
                done = next_query + 2 * (SETTINGS.timeout + BACKSTOP)
                assert all(now + elements[a] > done for a in held)


# --- names ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("Example-Video.TEST.", "example-video.test"),
        ("a.b", "a.b"),
        ("_srv-host.example", "_srv-host.example"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("ex\u3002ample\uff0etest", "ex.ample.test"),
        ("a" * 63 + ".example", "a" * 63 + ".example"),
        (".".join(["a" * 61] * 4), ".".join(["a" * 61] * 4)),  # 247 characters
    ],
)
def test_valid_names_are_normalised(name: str, canonical: str) -> None:
    assert validate_name(name) == canonical
    assert validate_name(canonical) == canonical


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("", "cannot be empty"),
        (".", "cannot be empty"),
        ("intranet", "single label"),
        ("1.2.3.4", "looks like an IP address"),
        ("a..example", "empty label"),
        (".example.test", "empty label"),
        ("-a.example", "may hold only"),
        ("a-.example", "may hold only"),
        ("a b.example", "may hold only"),
        ("a/b.example", "may hold only"),
        ("a" * 64 + ".example", "longer than 63"),
        (".".join(["a" * 62] * 4) + ".ab", "longer than 253"),
        ("\u00ad" * 300 + ".example", "longer than 253"),
        ("x\udcff.example", "internationalised"),
        (None, "must be a string"),
    ],
)
def test_invalid_names_are_refused_with_a_sentence(name: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_name(name)


@given(st.text(max_size=300))
def test_any_text_is_a_name_or_a_value_error(text: str) -> None:
    try:
        name = validate_name(text)
    except ValueError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert validate_name(name) == name
        assert name.isascii() and name == name.lower() and len(name) <= 253 and not name.endswith(".")


def test_settings_are_checked() -> None:
    for bad in (
        {"port": 0},
        {"port": 53.5},
        {"timeout": 0},
        {"retry": math.inf},
        {"min_ttl": 0},
        {"min_ttl": 10, "max_ttl": 5},
        {"max_addresses": 0},
    ):
        with pytest.raises(ValueError):
            ResolverSettings(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ResolverSettings(servers=("127.0.0.1",))  # type: ignore[arg-type]


# --- resolve, against a fake server on loopback -----------------------------------------------------------

Answer = Callable[[dns.message.Message], bytes | None]


class _Server(asyncio.DatagramProtocol):
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = self.answer(dns.message.from_wire(data))
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


def ask(
    answer: Answer,
    name: str = "video.example",
    tcp: Answer | None = None,
    family: int = 4,
    server: str = "127.0.0.1",
    **settings: object,
) -> tuple[tuple[Address, ...], int]:
    """``resolve(name, family)`` against a server on 127.0.0.1 that answers each UDP query with
    ``answer(query)`` and, if given, each TCP query with ``tcp(query)`` (on the same port)."""

    async def serve_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert tcp is not None
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            length = int.from_bytes(await reader.readexactly(2), "big")
            reply = tcp(dns.message.from_wire(await reader.readexactly(length)))
            if reply is not None:
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        writer.close()

    async def run() -> tuple[tuple[Address, ...], int]:
        loop = asyncio.get_running_loop()
        for _ in range(20):  # a free port for both UDP and TCP
            transport, _ = await loop.create_datagram_endpoint(lambda: _Server(answer), local_addr=(server, 0))
            port = transport.get_extra_info("sockname")[1]
            try:
                listening = await asyncio.start_server(serve_tcp, server, port) if tcp else None
                break
            except OSError:
                transport.close()
        options = {"timeout": 1.0, **settings}
        try:
            settings_ = ResolverSettings(servers=(ip_address(server),), port=port, **options)  # type: ignore[arg-type]
            return await resolve(name, settings_, family)
        finally:
            transport.close()
            if listening is not None:
                listening.close()

    return asyncio.run(run())


def records(*rrsets: tuple[str, int, str, list[str]], rcode: int = dns.rcode.NOERROR) -> Answer:
    """A server answering every query with these ``(name, ttl, type, values)`` records."""

    def answer(query: dns.message.Message) -> bytes:
        response = dns.message.make_response(query)
        response.set_rcode(rcode)
        for owner, ttl, rdtype, values in rrsets:
            response.answer.append(dns.rrset.from_text_list(owner, ttl, "IN", rdtype, values))
        return response.to_wire()

    return answer


def test_resolve_gives_sorted_unique_addresses_and_the_smallest_ttl() -> None:
    answer = records(("video.example.", 300, "A", ["192.0.2.2", "192.0.2.1"]))
    assert ask(answer, "Video.Example") == ((A, B), 300)


def test_a_cname_that_expires_sooner_sets_the_ttl() -> None:
    answer = records(
        ("video.example.", 30, "CNAME", ["edge.cdn.example."]), ("edge.cdn.example.", 600, "A", ["198.51.100.7"])
    )
    assert ask(answer) == ((C,), 30)


def test_answers_are_capped() -> None:
    many = [f"203.0.113.{i}" for i in range(1, 201)]
    addresses, _ = ask(records(("video.example.", 60, "A", many)), max_addresses=5)
    assert addresses == tuple(sorted(IPv4Address(a) for a in many))[:5]


def truncated(query: dns.message.Message) -> bytes:
    response = dns.message.make_response(query)
    response.flags |= dns.flags.TC
    return response.to_wire()


def test_a_truncated_answer_is_fetched_over_tcp_and_capped() -> None:
    many = [f"203.0.{i // 250}.{i % 250 + 1}" for i in range(3000)]  # ~50 KB: the most one TCP answer holds
    addresses, ttl = ask(truncated, tcp=records(("video.example.", 60, "A", many)), max_addresses=64)
    assert addresses == tuple(sorted(IPv4Address(a) for a in many))[:64] and ttl == 60


def test_addresses_no_destination_can_have_are_dropped() -> None:
    bogus = ["0.0.0.0", "127.0.0.1", "169.254.1.1", "224.0.0.1", "255.255.255.255", "240.0.0.1"]
    assert ask(records(("video.example.", 60, "A", [*bogus, "192.0.2.1"]))) == ((A,), 60)
    with pytest.raises(ResolveError, match=r"video.example: no usable IPv4 address in the answer \(0.0.0.0"):
        ask(records(("video.example.", 60, "A", ["0.0.0.0"])))


def servfail(query: dns.message.Message) -> bytes:
    response = dns.message.make_response(query)
    response.set_rcode(dns.rcode.SERVFAIL)
    return response.to_wire()


def garbage(query: dns.message.Message) -> bytes:
    return query.id.to_bytes(2, "big") + b"\x81\x80\x00\x01\x00\x05\x00\x00\x00\x00\xff\xff\xff"


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (records(rcode=dns.rcode.NXDOMAIN), r"^video.example: no such domain \(NXDOMAIN\)$"),
        (records(), r"^video.example: no IPv4 address \(the domain has no A record\)$"),
        (records(("video.example.", 60, "AAAA", ["2001:db8::1"])), r"no IPv4 address"),
        (servfail, r"^video.example: no server gave a usable answer: .*127.0.0.1.* answered SERVFAIL$"),
        (lambda query: None, r"^video.example: no answer within 0.3s"),
        (garbage, r"^video.example: no answer within 0.3s"),  # dropped like a spoofed reply, so: silence
        (
            truncated,
            r"^video.example: no server gave a usable answer: 127.0.0.1:\d+ \(tcp\) sent a malformed answer \(",
        ),
    ],
    ids=["nxdomain", "no-answer", "only-aaaa", "servfail", "silence", "malformed", "malformed-tcp"],
)
def test_every_failure_is_one_clear_line(answer: Answer, message: str) -> None:
    with pytest.raises(ResolveError, match=message) as caught:
        ask(answer, tcp=garbage, timeout=0.3)
    assert "\n" not in str(caught.value) and len(str(caught.value)) <= 300


def test_an_invalid_name_is_never_queried() -> None:
    asked: list[dns.message.Message] = []
    with pytest.raises(ValueError, match="single label"):
        ask(lambda query: asked.append(query), name="intranet")  # type: ignore[func-returns-value]
    assert asked == []


# --- the watcher -------------------------------------------------------------------------------------


def test_the_watcher_survives_a_failing_resolution_and_hands_on_the_rest() -> None:
    async def fake(name: str, settings: ResolverSettings, family: int) -> tuple[tuple[Address, ...], int]:
        if name == "cdn.example":
            raise RuntimeError("boom")
        if name == "mail.example":
            raise ResolveError("mail.example: no such domain (NXDOMAIN)")
        return (A, B), 300

    async def run() -> tuple[Elements, dict]:
        changed: asyncio.Queue[Elements] = asyncio.Queue()
        watcher = DomainWatcher(NAMES, SETTINGS, changed.put_nowait, resolver=fake)
        task = asyncio.create_task(watcher.run())
        try:
            elements = await asyncio.wait_for(changed.get(), 10)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        return elements, watcher.status()

    elements, status = asyncio.run(run())
    assert set(elements) == {A, B}
    assert status["video.example"]["state"] == "ok"
    assert status["cdn.example"]["state"] == "failed"
    assert status["cdn.example"]["error"] == "cdn.example: internal error: RuntimeError: boom"
    assert status["mail.example"]["error"] == "mail.example: no such domain (NXDOMAIN)"
    assert status["video.example"]["last_success"] > 1e9  # Unix time


def test_the_watcher_stops_promptly_while_a_query_hangs() -> None:
    async def run() -> None:
        started = asyncio.Event()

        async def hang(name: str, settings: ResolverSettings, family: int) -> tuple[tuple[Address, ...], int]:
            started.set()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        watcher = DomainWatcher(NAMES, ResolverSettings(timeout=3600), lambda e: None, resolver=hang)
        task = asyncio.create_task(watcher.run())
        await asyncio.wait_for(started.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)

    asyncio.run(run())


def test_the_watcher_hands_elements_on_only_when_they_change() -> None:
    clock = [1000.0]
    pushed: list[Elements] = []
    watcher = DomainWatcher(NAMES, SETTINGS, pushed.append, clock=lambda: clock[0])
    table = watcher.tables[4]
    table.failed("video.example", "timeout", 1000.0)  # nothing known, nothing to hand on
    watcher._push(1000.0)
    assert pushed == []
    table.succeeded("video.example", [A], 60, 1000.0)
    watcher._push(1000.0)
    watcher._push(1030.0)  # nothing happened: the elements already last long enough
    assert pushed == [{A: math.ceil(60 + table.grace)}]
    table.succeeded("video.example", [A], 60, 1048.0)  # the refresh: timeouts extended
    watcher._push(1048.0)
    table.failed("video.example", "timeout", 1096.0)  # the next one fails: last good kept alive
    watcher._push(1096.0)
    table.succeeded("video.example", [B], 60, 1106.0)  # the address changed
    watcher._push(1106.0)
    assert [set(e) for e in pushed] == [{A}, {A}, {A}, {B}]


def test_a_failing_on_change_is_retried() -> None:
    calls: list[Elements] = []

    def flaky(elements: Elements) -> None:
        calls.append(elements)
        if len(calls) == 1:
            raise OSError("nft busy")

    watcher = DomainWatcher(NAMES, SETTINGS, flaky)
    watcher.tables[4].succeeded("video.example", [A], 60, 0.0)
    assert [watcher._push(0.0), watcher._push(0.0), watcher._push(0.0)] == [False, True, True]
    assert len(calls) == 2


# --- IPv6: AAAA records into a table of their own ------------------------------------------------------

V6A, V6B = IPv6Address("2001:db8:f::10"), IPv6Address("2001:db8:f::11")
DUAL = ResolverSettings(min_ttl=60, max_ttl=3600, retry=10, max_addresses=3, ipv6=True)


def test_resolve_gives_aaaa_addresses_and_drops_those_no_destination_can_have() -> None:
    bogus = ["::", "::1", "fe80::1", "ff02::1", "::ffff:192.0.2.1"]
    answer = records(("video.example.", 120, "AAAA", [*bogus, "2001:db8:f::11", "2001:db8:f::10"]))
    assert ask(answer, family=6) == ((V6A, V6B), 120)
    with pytest.raises(ResolveError, match=r"no usable IPv6 address in the answer \(::"):
        ask(records(("video.example.", 60, "AAAA", ["::1", "::"])), family=6)


def test_a_resolver_may_be_an_ipv6_address() -> None:
    answer = records(("video.example.", 120, "AAAA", ["2001:db8:f::10"]))
    assert ask(answer, family=6, server="::1") == ((V6A,), 120)


def test_a_name_without_aaaa_records_is_an_answer_not_an_outage() -> None:
    with pytest.raises(NoRecords, match=r"^video.example: no IPv6 address \(the domain has no AAAA record\)$"):
        ask(records(("video.example.", 60, "A", ["192.0.2.1"])), family=6)


def test_a_table_refuses_addresses_of_the_other_family() -> None:
    with pytest.raises(ValueError, match="IPv6 address in an IPv4 answer"):
        DomainTable(["video.example"], SETTINGS).succeeded("video.example", [V6A], 60, 0.0)
    table = DomainTable(["video.example"], DUAL, family=6)
    table.succeeded("video.example", [V6B, V6A], 60, 0.0)
    assert table.addresses("video.example") == (V6A, V6B)


def test_resolving_both_families_doubles_the_grace() -> None:
    names = [f"n{i}.example" for i in range(CONCURRENCY)]
    one, both = DomainTable(names, SETTINGS), DomainTable(names, DUAL)
    assert both.grace - one.grace == pytest.approx(2 * (SETTINGS.timeout + BACKSTOP))


def _run_watcher(watcher: DomainWatcher, until: Callable[[], bool]) -> None:
    async def run() -> None:
        task = asyncio.create_task(watcher.run())
        try:
            for _ in range(1000):
                if until():
                    return
                await asyncio.sleep(0.01)
            raise AssertionError(f"never: {watcher.status()}")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(run())


def test_the_watcher_resolves_each_family_apart() -> None:
    """A name with A and AAAA, one with A only (its IPv6 ``none``, asked again after min_ttl, not retry),
    one whose AAAA query times out (its IPv4 addresses stay in use): every family's elements are handed on."""
    asked: list[tuple[str, int]] = []

    async def fake(name: str, settings: ResolverSettings, family: int) -> tuple[tuple[Address, ...], int]:
        asked.append((name, family))
        if family == 4:
            return ((A,) if name == "video.example" else (B,)), 300
        if name == "video.example":
            return (V6A,), 300
        if name == "cdn.example":
            raise NoRecords("cdn.example: no IPv6 address (the domain has no AAAA record)")
        raise TimeoutError

    pushed: list[Elements] = []
    watcher = DomainWatcher(NAMES, DUAL, pushed.append, resolver=fake)
    _run_watcher(watcher, lambda: len(asked) == 6 and bool(pushed))
    assert sorted(asked) == sorted((n, f) for n in NAMES for f in (4, 6))
    assert set(pushed[-1]) == {A, B, V6A}
    assert watcher.addresses("video.example") == (A, V6A)
    status = watcher.status()
    assert (status["video.example"]["state"], status["video.example"]["ipv6"]["state"]) == ("ok", "ok")
    assert status["video.example"]["ipv6"]["addresses"] == [str(V6A)]
    cdn = status["cdn.example"]
    assert (cdn["state"], cdn["ipv6"]["state"], cdn["ipv6"]["addresses"]) == ("ok", "none", [])
    assert "no AAAA record" in cdn["ipv6"]["error"]
    mail = status["mail.example"]
    assert (mail["state"], mail["addresses"], mail["ipv6"]["state"]) == ("ok", [str(B)], "failed")
    assert "no answer within" in mail["ipv6"]["error"]
    six = watcher.tables[6]
    failed_at = six.status()["cdn.example"]["last_failure"]
    assert "cdn.example" not in six.due(failed_at + DUAL.min_ttl - 1)  # a NODATA answer: asked again later
    assert "mail.example" in six.due(six.status()["mail.example"]["last_failure"] + DUAL.retry)


def test_an_ipv4_only_watcher_asks_no_aaaa() -> None:
    asked: list[int] = []

    async def fake(name: str, settings: ResolverSettings, family: int) -> tuple[tuple[Address, ...], int]:
        asked.append(family)
        return (A,), 300

    watcher = DomainWatcher(NAMES, SETTINGS, lambda e: None, resolver=fake)
    _run_watcher(watcher, lambda: len(asked) == 3)
    assert set(asked) == {4} and list(watcher.tables) == [4]
    assert "ipv6" not in watcher.status()["video.example"]
