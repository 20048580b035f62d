"""Destination domains: the names policy rules give in ``dst_domains``, kept resolved into address sets
(IPv4 from A records; with IPv6 balanced, IPv6 from AAAA records too).

Three layers, so that the daemon's event loop never waits on DNS and each layer is testable alone:

* :class:`DomainTable` is pure bookkeeping for one address family (no I/O, no clock: ``now`` is passed
  in).  It says which names are due for a query, records answers and failures, and gives the set's
  elements with their timeouts.
* :func:`resolve` is one bounded query of one record type (A or AAAA), one deadline for the whole resolution
  (every server, retries, TCP fallback), answers capped and validated.  Every answer is untrusted:
  a server may send thousands of records, addresses no destination can have, a zero or a huge TTL,
  or garbage — each case is bounded here or in the table.
* :class:`DomainWatcher` is the task that drives them: one table per family, due names queried side by
  side (at most :data:`CONCURRENCY` at once), the elements handed on only when they change.

The families are apart on purpose: a resolver that drops AAAA queries (they exist) must not take a
name's IPv4 addresses away, and a name without AAAA records is an answer, not an outage: it is asked
again after ``min_ttl``, like a cache would, not every ``retry`` seconds.

Why element timeouts: an nft set element added with a timeout lapses by itself, so if the daemon dies
or hangs the addresses of a name do not stay in a policy forever.  While the daemon runs, every
refresh hands the elements on again with a fresh timeout.  When resolution keeps failing, the last
good addresses are *kept alive* (each failure restates them for another TTL) rather than left to
expire: clients keep using the addresses their own resolvers cached, and a DNS outage should not
move their traffic to another ISP.  The error shows in ``status`` meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, ip_address
from typing import Any

import dns.asyncbackend
import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver

from wanlb.tasks import log_crash

log = logging.getLogger("wanlb.domains")

MAX_NAME = 253  # characters of a domain name, without the trailing dot
MAX_LABEL = 63
CONCURRENCY = 8  # queries in flight at once
REFRESH_AT = 0.8  # share of the effective TTL after which a name is queried again
BACKSTOP = 1.0  # seconds our own deadline allows beyond dnspython's lifetime
SLACK = 5.0  # seconds of element lifetime beyond the worst-case refresh delay
MAX_SLEEP = 3600.0
EARLY = 0.001  # seconds: a name due this soon is due now (asyncio wakes timers up to its clock resolution early)
ERROR_LIMIT = 300  # characters of an error message kept

_LABEL_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_DOTS_RE = re.compile("[.\u3002\uff0e\uff61]")  # IDNA's label separators
_THIS_NETWORK = IPv4Network("0.0.0.0/8")

Address = IPv4Address | IPv6Address
Elements = dict[Address, int]
RECORD = {4: dns.rdatatype.A, 6: dns.rdatatype.AAAA}


@dataclass(frozen=True)
class ResolverSettings:
    """How names are resolved.  ``servers`` empty means the system's (``/etc/resolv.conf``, read per query,
    so a DHCP change is followed); ``port`` applies to whichever servers are used.  TTLs are clamped to
    ``[min_ttl, max_ttl]``: the floor keeps a zero-TTL answer from turning into a query storm, the cap
    keeps a bogus week-long TTL from pinning stale addresses."""

    servers: tuple[Address, ...] = ()
    port: int = 53
    timeout: float = 2.0  # seconds for one whole resolution
    min_ttl: float = 60.0
    max_ttl: float = 3600.0
    max_addresses: int = 64  # per name and family
    retry: float = 10.0  # seconds before a failed name is queried again
    ipv6: bool = False  # resolve AAAA records too (IPv6 is balanced)

    def __post_init__(self) -> None:
        if not all(isinstance(server, IPv4Address | IPv6Address) for server in self.servers):
            raise ValueError("resolver servers must be IP addresses")
        if not isinstance(self.port, int) or isinstance(self.port, bool) or not 1 <= self.port <= 65535:
            raise ValueError(f"resolver port {self.port!r} is not between 1 and 65535")
        for field, value in (("timeout", self.timeout), ("retry", self.retry)):
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"resolver {field} must be a positive number of seconds")
        if not math.isfinite(self.max_ttl) or not 1 <= self.min_ttl <= self.max_ttl:
            raise ValueError("resolver TTL bounds need 1 s <= min_ttl <= max_ttl")
        if not isinstance(self.max_addresses, int) or isinstance(self.max_addresses, bool) or self.max_addresses < 1:
            raise ValueError("resolver max_addresses must be at least 1")


class ResolveError(Exception):
    """A name could not be resolved; the message is one line, fit for logs and ``status``."""


class NoRecords(ResolveError):
    """The name exists but has no record of the type asked (a NODATA answer): an answer, asked again later."""


def _clip(text: str, limit: int = ERROR_LIMIT) -> str:
    """One printable line of at most ``limit`` characters: error texts may quote what a server sent."""
    line = "".join(ch if ch.isprintable() else " " for ch in text)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def validate_name(name: object) -> str:
    """A destination domain in canonical form (lowercase ASCII, IDNA-encoded, no trailing dot), or ValueError.

    Unicode labels are converted with Python's IDNA codec (IDNA 2003); where IDNA 2003 and 2008 differ
    (``ß``, ``ς``, joiners) write the ``xn--`` form.  Labels are letters, digits, ``-`` and ``_`` (some
    real hosts have an underscore), at most 63 characters, at most 253 in all.  A single label is refused:
    names are looked up as given, without search domains, so ``intranet`` would query the root.
    """
    if not isinstance(name, str):
        raise ValueError(f"a domain name must be a string, not {type(name).__name__}")
    shown = _clip(repr(name), 60)
    if len(name) > MAX_NAME + 1:
        raise ValueError(f"{shown} is longer than {MAX_NAME} characters, the most a domain name can have.")
    labels = _DOTS_RE.split(name)
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()  # a trailing dot: the name is absolute anyway
    if labels == [""]:
        raise ValueError("a domain name cannot be empty.")
    ascii_labels = []
    for label in labels:
        if not label:
            raise ValueError(f"{shown} has an empty label (a leading dot or two dots in a row).")
        if not label.isascii():
            try:
                label = label.encode("idna").decode("ascii")
            except UnicodeError:
                raise ValueError(
                    f"{shown}: label {_clip(repr(label), 60)} is not a valid internationalised label."
                ) from None
        label = label.lower()
        if len(label) > MAX_LABEL:
            raise ValueError(f"{shown}: label {_clip(repr(label), 60)} is longer than {MAX_LABEL} characters.")
        if not _LABEL_RE.fullmatch(label):
            raise ValueError(
                f"{shown}: label {_clip(repr(label), 60)} may hold only letters, digits, '-' and '_', "
                f"and may not start or end with '-'."
            )
        ascii_labels.append(label)
    result = ".".join(ascii_labels)
    if len(result) > MAX_NAME:
        raise ValueError(f"{shown} is longer than {MAX_NAME} characters once encoded.")
    if len(ascii_labels) < 2:
        raise ValueError(f"{shown} is a single label: give the fully qualified name (search domains are not used).")
    if ascii_labels[-1].isdigit():
        raise ValueError(f"{shown} looks like an IP address, not a domain name: put addresses in dst, not dst_domains.")
    return result


def _usable(address: Address) -> bool:
    """Whether an answer's address can be a destination out of a WAN at all (the rest is dropped)."""
    if isinstance(address, IPv6Address) and (address.is_unspecified or address.ipv4_mapped is not None):
        return False
    return not (
        (isinstance(address, IPv4Address) and address in _THIS_NETWORK)
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved  # 240/4, with the limited broadcast address
    )


@dataclass
class _Entry:
    addresses: tuple[Address, ...] = ()  # the last good answer
    ttl: float = 0.0  # its effective TTL (clamped)
    succeeded_at: float | None = None
    failed_at: float | None = None
    error: str | None = None  # of the last failure
    failing: bool = False  # the last query failed
    retry: float = 0.0  # seconds from the last failure to the next query
    nodata: bool = False  # the last failure was an answer without records of the family
    keep_until: float = -math.inf  # when the addresses' elements may lapse, as of the last event


class DomainTable:
    """The state of every resolved name in one address family (``family`` 4 or 6), pure: ``now`` comes
    from the caller (any monotonic clock).

    ``grace`` is added to every element's timeout: the longest a due refresh can wait for a slot among
    :data:`CONCURRENCY` queries (of both families' tables) and then take, twice over, plus :data:`SLACK`
    — so a refresh in flight never lets an element lapse, whatever the TTL.
    """

    def __init__(self, names: Iterable[str], settings: ResolverSettings, family: int = 4) -> None:
        if family not in (4, 6):
            raise ValueError(f"address family {family!r} is not 4 or 6")
        self.settings = settings
        self.family = family
        self._entries: dict[str, _Entry] = {validate_name(name): _Entry() for name in names}
        queries = len(self._entries) * (2 if settings.ipv6 else 1)
        rounds = math.ceil(queries / CONCURRENCY)
        self.grace = 2.0 * rounds * (settings.timeout + BACKSTOP) + SLACK

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def _next_query(self, entry: _Entry) -> float:
        if entry.failing:
            assert entry.failed_at is not None
            return entry.failed_at + entry.retry
        if entry.succeeded_at is None:
            return -math.inf
        return entry.succeeded_at + REFRESH_AT * entry.ttl

    def due(self, now: float) -> list[str]:
        """Names to query now: never tried, at 80 % of their TTL, or failed ``retry`` seconds ago."""
        return [name for name, entry in self._entries.items() if self._next_query(entry) <= now + EARLY]

    def next_wakeup(self, now: float) -> float:
        """Seconds until a name is due (0 if one is; infinite without names)."""
        return max(0.0, min((self._next_query(e) for e in self._entries.values()), default=math.inf) - now)

    def succeeded(self, name: str, addresses: Iterable[Address], ttl: float, now: float) -> None:
        """Record an answer.  Addresses are deduplicated, sorted and capped again here (any of the other
        family is a bug: ValueError); an answer without any counts as a failure (the last good addresses
        stay)."""
        entry = self._entries[name]
        found = {ip_address(a) for a in addresses}
        if any(a.version != self.family for a in found):
            raise ValueError(f"{name}: an IPv{6 if self.family == 4 else 4} address in an IPv{self.family} answer")
        kept = tuple(sorted(found))[: self.settings.max_addresses]  # type: ignore[type-var]
        if not kept:
            self.failed(name, "the answer held no address", now)
            return
        ttl = float(ttl) if math.isfinite(ttl) else self.settings.min_ttl
        entry.addresses = kept
        entry.ttl = min(max(ttl, self.settings.min_ttl), self.settings.max_ttl)
        entry.succeeded_at = now
        entry.failing = False
        entry.keep_until = now + entry.ttl + self.grace

    def failed(self, name: str, error: str, now: float, retry: float | None = None, nodata: bool = False) -> None:
        """Record a failure: the last good addresses stay, restated for another TTL (or until past the
        next retry, if that is later).  ``retry``: seconds until the name is asked again (default the
        settings' ``retry``); ``nodata``: the answer said the name has no record of the family."""
        entry = self._entries[name]
        entry.failed_at = now
        entry.failing = True
        entry.error = _clip(error)
        entry.retry = self.settings.retry if retry is None else retry
        entry.nodata = nodata
        if entry.addresses:
            lifetime = max(entry.ttl, entry.retry) + self.grace
            entry.keep_until = max(entry.keep_until, now + lifetime)

    def addresses(self, name: str) -> tuple[Address, ...]:
        """The last good addresses of ``name`` (empty if it never resolved)."""
        return self._entries[name].addresses

    def error(self, name: str) -> str | None:
        """The error of the last query of ``name`` if it failed, else None."""
        entry = self._entries[name]
        return entry.error if entry.failing else None

    def elements(self, now: float) -> Elements:
        """Every address to hold in the set, with its timeout in whole seconds (at least 1).

        An address of several names gets the longest timeout.  Last good addresses are always here,
        however long resolution has been failing: only an answer without them removes them.
        """
        result: Elements = {}
        for entry in self._entries.values():
            if not entry.addresses:
                continue
            timeout = max(1, math.ceil(round(entry.keep_until - now, 6)))  # no extra second for float noise
            for address in entry.addresses:
                result[address] = max(timeout, result.get(address, 0))
        return result

    def status(self) -> dict[str, dict[str, Any]]:
        """Per name, JSON-able: ``state`` (``pending``, ``ok``, ``stale``: failing with last good addresses
        kept, ``failed``: failing with none, ``none``: the name has no record of this family), the
        addresses, effective TTL, last success and failure time (on the caller's clock) and the last error."""
        result = {}
        for name, e in self._entries.items():
            if e.failing:
                state = "stale" if e.addresses else "none" if e.nodata else "failed"
            else:
                state = "ok" if e.succeeded_at is not None else "pending"
            result[name] = {
                "state": state,
                "addresses": [str(a) for a in e.addresses],
                "ttl": e.ttl if e.addresses else None,
                "last_success": e.succeeded_at,
                "last_failure": e.failed_at,
                "error": e.error,
            }
        return result


async def _resolver(settings: ResolverSettings) -> dns.asyncresolver.Resolver:
    if settings.servers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [str(server) for server in settings.servers]
    else:  # reads /etc/resolv.conf: a file, so not on the event loop
        resolver = await asyncio.to_thread(dns.asyncresolver.Resolver, configure=True)
    resolver.port = settings.port
    resolver.cache = None
    # Each server gets two tries within the lifetime, so one lost datagram does not fail the name.
    resolver.timeout = settings.timeout / (2 * max(1, len(resolver.nameservers)))
    return resolver


def _server(text: str | None, port: int) -> str:
    """``Do53:192.0.2.53@53`` (dnspython's name for a server) as ``192.0.2.53:53``."""
    address = (text or "?").removeprefix("Do53:").rpartition("@")[0] or text or "?"
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _server_errors(exc: dns.exception.DNSException) -> str:
    """What each server did, from a dnspython resolution error: ``: 192.0.2.53:53 answered SERVFAIL; …``."""
    parts = []
    for server, tcp, port, error, _ in (exc.kwargs.get("errors") or [])[:4]:
        if isinstance(error, dns.message.Truncated):
            continue  # retried over TCP: the TCP attempt tells what went wrong
        if isinstance(error, dns.exception.Timeout):
            did = "did not answer"
        elif isinstance(error, dns.exception.FormError):
            did = f"sent a malformed answer ({error})"
        elif isinstance(error, Exception):
            did = f"failed: {type(error).__name__}: {error}"
        else:
            did = f"answered {error}"
        parts.append(f"{_server(server, port)}{' (tcp)' if tcp else ''} {did}")
    return f": {'; '.join(dict.fromkeys(parts))}" if parts else ""


async def resolve(name: str, settings: ResolverSettings, family: int = 4) -> tuple[tuple[Address, ...], int]:
    """The addresses of ``name`` in ``family`` (4: A records, 6: AAAA; sorted, deduplicated, at most
    ``max_addresses``) and the answer's TTL.

    The TTL is the smallest of the RRset and any CNAME on the way (a CNAME that expires sooner can
    change the answer sooner).  Addresses no destination can have (IPv4: 0/8, loopback, link-local,
    multicast, 240/4; IPv6: ::, loopback, link-local, multicast, IPv4-mapped, reserved) are dropped.
    Raises :class:`ResolveError` (one line, naming the name) for every failure, :class:`NoRecords` when
    the name has no record of the type.
    """
    name = validate_name(name)
    rdtype = RECORD[family]
    try:
        async with asyncio.timeout(settings.timeout + BACKSTOP):
            resolver = await _resolver(settings)
            answer = await resolver.resolve(dns.name.from_text(name), rdtype, search=False, lifetime=settings.timeout)
    except dns.resolver.NXDOMAIN:
        raise ResolveError(f"{name}: no such domain (NXDOMAIN)") from None
    except dns.resolver.NoAnswer:
        record = dns.rdatatype.to_text(rdtype)
        raise NoRecords(f"{name}: no IPv{family} address (the domain has no {record} record)") from None
    except (dns.resolver.LifetimeTimeout, TimeoutError) as exc:
        detail = _server_errors(exc) if isinstance(exc, dns.exception.DNSException) else ""
        raise ResolveError(_clip(f"{name}: no answer within {settings.timeout:g}s{detail}")) from None
    except dns.resolver.NoResolverConfiguration:
        raise ResolveError(f"{name}: no nameserver in /etc/resolv.conf") from None
    except dns.resolver.NoNameservers as exc:
        raise ResolveError(_clip(f"{name}: no server gave a usable answer{_server_errors(exc)}")) from None
    except dns.exception.DNSException as exc:
        raise ResolveError(_clip(f"{name}: {type(exc).__name__}: {exc}")) from None
    records = answer.rrset or ()
    found = {ip_address(rdata.address) for rdata in records}
    usable = {address for address in found if _usable(address)}
    if not usable:
        shown = ", ".join(str(a) for a in sorted(found)[:4])  # type: ignore[type-var]
        raise ResolveError(f"{name}: no usable IPv{family} address in the answer ({shown})")
    if len(usable) > settings.max_addresses:
        log.debug("%s: %d addresses, keeping the first %d", name, len(usable), settings.max_addresses)
    return tuple(sorted(usable))[: settings.max_addresses], int(answer.chaining_result.minimum_ttl)  # type: ignore[type-var]


def _preload() -> None:
    """Import now what dnspython imports the first time it needs it: its asyncio backend, and the module of
    each record type (loaded when an answer first holds one — a server chooses which), so that no query
    reads a file on the event loop."""
    dns.asyncbackend.get_backend("asyncio")
    for rdclass in (dns.rdataclass.IN, dns.rdataclass.ANY):
        for rdtype in dns.rdatatype.RdataType:
            dns.rdata.get_rdata_class(rdclass, rdtype)


Resolve = Callable[[str, ResolverSettings, int], Awaitable[tuple[tuple[Address, ...], int]]]


class DomainWatcher:
    """Keeps ``names`` resolved and hands the sets' elements to ``on_change`` when they change.

    One :class:`DomainTable` per family (``tables[4]``, and ``tables[6]`` if ``settings.ipv6``), each
    name asked separately per family.  ``on_change`` gets every element of both families (address →
    timeout in seconds) each time the addresses change or timeouts need extending (a refresh, or a
    failure that keeps the last good addresses alive); it is called on the event loop and must not block
    (queue the nft update).  ``run`` never returns; cancel it to stop.  ``clock`` is monotonic;
    ``resolver`` is replaceable for tests.
    """

    def __init__(
        self,
        names: Iterable[str],
        settings: ResolverSettings,
        on_change: Callable[[Elements], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        resolver: Resolve = resolve,
    ) -> None:
        names = tuple(names)
        self.tables = {family: DomainTable(names, settings, family) for family in ((4, 6) if settings.ipv6 else (4,))}
        self._settings = settings
        self._on_change = on_change
        self._clock = clock
        self._resolve = resolver
        self._pushed: dict[Address, float] = {}  # address -> when its element lapses, as last handed on

    @property
    def names(self) -> tuple[str, ...]:
        return self.tables[4].names

    def addresses(self, name: str) -> tuple[Address, ...]:
        """The last good addresses of ``name``, IPv4 first."""
        return tuple(a for table in self.tables.values() for a in table.addresses(name))

    def elements(self, now: float) -> Elements:
        """Every family's elements (an address is of one family, so the union loses nothing)."""
        return {a: t for table in self.tables.values() for a, t in table.elements(now).items()}

    async def run(self) -> None:
        await asyncio.to_thread(_preload)
        limit = asyncio.Semaphore(CONCURRENCY)
        while True:
            now = self._clock()
            due = [(table, name) for table in self.tables.values() for name in table.due(now)]
            if due:
                await asyncio.gather(*(self._refresh(table, name, limit) for table, name in due))
            handed_on = self._push(self._clock())
            now = self._clock()
            wait = min(table.next_wakeup(now) for table in self.tables.values())
            await asyncio.sleep(min(wait, MAX_SLEEP) if handed_on else min(wait, self._settings.retry))

    async def _refresh(self, table: DomainTable, name: str, limit: asyncio.Semaphore) -> None:
        """Query one name in ``table``'s family and record the outcome; no exception but cancellation leaves."""
        retry, nodata = None, False
        async with limit:
            try:
                async with asyncio.timeout(self._settings.timeout + BACKSTOP):
                    addresses, ttl = await self._resolve(name, self._settings, table.family)
                table.succeeded(name, addresses, ttl, self._clock())
                return
            except NoRecords as exc:
                error, retry, nodata = str(exc), max(self._settings.retry, self._settings.min_ttl), True
            except ResolveError as exc:
                error = str(exc)
            except TimeoutError:
                error = f"{name}: no answer within {self._settings.timeout:g}s"
            except Exception as exc:  # a bug or a surprise in one resolution must not stop the others
                log.exception("resolving %s", name)
                error = f"{name}: internal error: {type(exc).__name__}: {exc}"
        error = _clip(error)
        if error != table.error(name) and not (nodata and not table.addresses(name)):
            kept = " (last good addresses kept)" if table.addresses(name) else ""
            log.warning("%s%s", error, kept)  # once, not every retry; a name that never had the record is no news
        table.failed(name, error, self._clock(), retry, nodata)

    def _push(self, now: float) -> bool:
        """Hand the elements on if an address came or went, or an element's life can be extended by over 1 s;
        False if ``on_change`` failed (then it is tried again within ``retry`` seconds)."""
        elements = self.elements(now)
        lapse = {address: now + timeout for address, timeout in elements.items()}
        if lapse.keys() == self._pushed.keys() and all(lapse[a] <= self._pushed[a] + 1 for a in lapse):
            return True
        try:
            self._on_change(elements)
        except Exception:
            log.exception("handing on the addresses of %s", ", ".join(self.names))
            return False
        self._pushed = lapse
        return True

    def status(self) -> dict[str, dict[str, Any]]:
        """:meth:`DomainTable.status` of the IPv4 table with its times as Unix time; with IPv6, each name's
        ``ipv6`` holds the IPv6 table's (the shape of ``status``'s per-ISP ``ipv6``)."""
        offset = time.time() - self._clock()
        tables = {family: table.status() for family, table in self.tables.items()}
        for result in tables.values():
            for entry in result.values():
                for key in ("last_success", "last_failure"):
                    if entry[key] is not None:
                        entry[key] = round(entry[key] + offset, 3)
        if 6 in tables:
            for name, entry in tables[4].items():
                entry["ipv6"] = tables[6][name]
        return tables[4]


class DomainSets:
    """The resolver of the rules' ``dst_domains`` and the nft sets it fills, for the daemon.

    :meth:`configure` (at start and after each reload) restarts the watcher when the names or the resolver
    settings changed; :meth:`push` (after every change and every reconcile, which may have re-created the
    sets empty) hands ``apply`` the transaction that rewrites every domain rule's sets, as ``render`` writes
    it (:func:`wanlb.rules.domain_sets_text`).  ``apply`` must not block: the daemon queues it behind its
    reconciles.
    """

    def __init__(self, apply: Callable[[str], None], render: Callable[[Iterable[int], Any, Any], str],
                 ipv6: Callable[[], bool]) -> None:  # fmt: skip
        self.apply = apply
        self.render = render  # (families, addresses of a name, element timeouts) → the transaction
        self.ipv6 = ipv6  # whether the config in force balances IPv6
        self._running: tuple[DomainWatcher, asyncio.Task[None], ResolverSettings] | None = None

    def configure(self, config: Any) -> None:
        dns = config.dns
        names = tuple(dict.fromkeys(n for r in config.rules for n in r.dst_domains)) if dns.resolve else ()
        settings = ResolverSettings(
            dns.servers, timeout=dns.timeout, min_ttl=dns.min_ttl, max_ttl=dns.max_ttl, ipv6=config.ipv6
        )
        if self._running is not None and (self._running[0].names, self._running[2]) == (names, settings):
            return
        self.stop()
        if names:
            watcher = DomainWatcher(names, settings, lambda _elements: self.push())
            task = asyncio.create_task(watcher.run())
            task.add_done_callback(log_crash)
            self._running = (watcher, task, settings)

    def push(self) -> None:
        if self._running is None:
            return
        watcher = self._running[0]
        families = watcher.tables if self.ipv6() else (4,)  # a reload may just have dropped dom6_
        text = self.render(families, watcher.addresses, watcher.elements(time.monotonic()))
        if text:
            self.apply(text)

    def status(self) -> dict[str, dict[str, Any]]:
        return self._running[0].status() if self._running else {}

    def addresses(self, name: str) -> tuple[Address, ...] | None:
        """The last good addresses (IPv4 first) of ``name`` if it is a destination domain the daemon resolves,
        else None: ``wanlb explain --to NAME`` answers from what the rules use, never from a query of its own."""
        try:
            canonical = validate_name(name)
        except ValueError:
            return None
        watcher = self._running[0] if self._running else None
        return watcher.addresses(canonical) if watcher is not None and canonical in watcher.names else None

    def stop(self) -> None:
        if self._running is not None:
            self._running[1].cancel()
            self._running = None
