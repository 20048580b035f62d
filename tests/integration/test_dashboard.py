"""The web dashboard in a real browser (Debian's chromium, driven by Playwright) against the daemon in the lab.

How the browser reaches the API: the daemon listens on the gateway's LAN address (192.168.77.1:9180), which
exists only inside the lab's namespaces. Playwright (sync API, in this test process) launches the browser
through a two-line wrapper given as ``executable_path``::

    #!/bin/sh
    exec ip netns exec <LAN client c1's namespace> /usr/bin/chromium "$@"

``ip netns exec`` only switches namespaces and execs, so the browser is Debian's ``/usr/bin/chromium`` itself
and keeps the pipes Playwright drives it through (``--remote-debugging-pipe``), while all its network is
c1's: it loads the page as an operator's browser on the LAN would, and the host gets no route into the lab.
Every chromium process lives in c1's namespace, so the lab's teardown kills any that a failed test left.
No browser is downloaded (no ``playwright install``).

The API runs with ``public_read: false``: the page must ask for the token before it can show anything.
The screenshots go to the test's tmp dir and to ``test-artifacts/`` in the checkout (ignored by git).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import CHROMIUM, chromium_in, module_lab

from wanlb.lab.gateway import LabGateway
from wanlb.lab.lab import Lab, python_module
from wanlb.lab.topology import HTTP_ADDR, HTTP_PORT, LAN_GW, client_addr

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"{CHROMIUM} is missing: apt-get install chromium"),
]

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]' (no browser download needed)"
)

ISPS = ("isp1", "isp2", "isp3")
PORT = 9180
BASE = f"http://{LAN_GW}:{PORT}"
TOKEN = "dashboard-token-for-the-lab-0123456789"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


lab = module_lab(isps=3, clients=2, ipv6=True)


@pytest.fixture(scope="module")
def gw(lab: Lab) -> Iterator[LabGateway]:
    token = lab.dir / "api.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)

    def edit(cfg: dict[str, Any]) -> None:
        cfg["api"] = {"listen": [f"{LAN_GW}:{PORT}"], "token_file": str(token), "public_read": False}
        # For the configuration view: a policy and two rules that no lab traffic matches.
        cfg["policies"] = {"video": {"members": [{"isp": "isp1", "weight": 3}, {"isp": "isp2", "tier": 2}]}}
        cfg["rules"] = [
            {"name": "voip", "dst": ["198.51.100.0/24"], "proto": "udp", "dport": [5060], "via": "isp1"},
            {"name": "to-video", "dst": ["198.51.100.80/32"], "policy": "video"},
        ]
        cfg["isps"][2]["quota"] = {"limit": "1GiB", "cycle": "monthly", "start_day": 1}  # for its gauge
        cfg["control"]["data_dir"] = str(lab.dir)  # (not the host's /var/lib/wanlb)

    g = LabGateway(lab)
    g.write(edit)
    g.start()
    g.wait_for(dict.fromkeys(ISPS, "up"))
    try:
        yield g
    finally:
        g.stop(cleanup=True)


@pytest.fixture(scope="module")
def browser(lab: Lab, gw: LabGateway) -> Iterator[Any]:
    """Chromium in c1's namespace: the page reaches the gateway as a browser on the LAN would."""
    with chromium_in(lab) as launched:
        yield launched


class Dashboard:
    """One browser tab on the dashboard, recording what it asked the network for and any script errors."""

    def __init__(self, browser: Any, width: int, height: int) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": height}, color_scheme="light")
        self.page = self.context.new_page()
        self.page.set_default_timeout(15_000)
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def open_and_sign_in(self, wrong_first: bool = False) -> None:
        """Load the page: the first read gets 401 and the token dialog opens (a wrong token is refused
        there); with the right one every ISP's card appears and the stream goes live."""
        page = self.page
        page.goto(BASE + "/")
        page.wait_for_selector("#auth-dialog[open]")
        if wrong_first:
            page.fill("#auth-token", "not-the-token-not-the-token")
            page.click("#auth-submit")
            page.wait_for_function("document.querySelector('#auth-error').textContent.includes('401')")
            assert page.is_visible("#auth-dialog[open]")
            assert page.locator("article.card").count() == 0  # nothing shown without the token
        page.fill("#auth-token", TOKEN)
        page.click("#auth-submit")
        page.wait_for_selector("#auth-dialog:not([open])", state="attached")
        for isp in ISPS:
            page.wait_for_selector(f"article[data-isp='{isp}'][data-status]")
        page.wait_for_function("document.querySelector('#conn').dataset.state === 'live'")

    def card(self, isp: str) -> dict[str, Any]:
        """What the ISP's card shows: status, its colour and the raw numbers behind the text."""
        result: dict[str, Any] = self.page.evaluate(
            """isp => {
                const card = document.querySelector(`article[data-isp="${isp}"]`);
                const out = {status: card.dataset.status, colour: getComputedStyle(card, '::before').backgroundColor,
                             badge: card.querySelector('[data-field=status]').textContent,
                             button: card.querySelector('button').textContent,
                             error: card.querySelector('[data-field=error]').textContent,
                             since: card.querySelector('.since').textContent, text: {}};
                for (const el of card.querySelectorAll('[data-field][data-value]')) {
                    out[el.dataset.field] = el.dataset.value === '' ? null : Number(el.dataset.value);
                    out.text[el.dataset.field] = el.textContent;
                }
                return out;
            }""",
            isp,
        )
        return result

    def wait_status(self, isp: str, status: str, timeout: float = 15.0) -> float:
        """Wait (polling the DOM in the page every 20 ms) until the card shows ``status``; the wall time then."""
        self.page.wait_for_function(
            "([isp, s]) => document.querySelector(`article[data-isp='${isp}']`)?.dataset.status === s",
            arg=[isp, status],
            polling=20,
            timeout=timeout * 1000,
        )
        return time.time()

    def explain(self, src: str, dst: str, proto: str = "tcp", iif: str = "") -> dict[str, Any]:
        """Fill the "Which ISP would this take?" form, submit it with Enter, and read what the page answers: the
        error line and each decision's parts."""
        page = self.page
        page.fill("#explain-from", src)
        page.fill("#explain-to", dst)
        page.select_option("#explain-proto", proto)
        page.fill("#explain-iif", iif)
        with page.expect_response(lambda r: "/api/v1/explain?" in r.url):
            page.press("#explain-iif", "Enter")
        page.wait_for_function("!document.querySelector('#explain-answer').hasAttribute('aria-busy')")
        result: dict[str, Any] = page.evaluate(
            """() => {
                const text = (root, field) => root.querySelector(`[data-field=${field}]`)?.textContent ?? null;
                const all = (root, sel) => [...root.querySelectorAll(sel)].map(li => li.textContent);
                return {error: document.querySelector('#explain-error').textContent,
                        decisions: [...document.querySelectorAll('#explain-answer .decision')].map(d => ({
                            verdict: d.dataset.verdict, isp: d.dataset.isp ?? null, flow: text(d, 'flow'),
                            headline: text(d, 'headline'), summary: text(d, 'summary'), rule: text(d, 'rule'),
                            policy: text(d, 'policy'), route: text(d, 'route'),
                            candidates: all(d, '.candidates li'), steps: all(d, '.steps li')}))};
            }"""
        )
        return result

    def api(self, path: str, query: dict[str, str]) -> tuple[int, Any]:
        """A GET of the API from the page (c1's network, the session's token): the status and the JSON."""
        reply: dict[str, Any] = self.page.evaluate(
            """async ([path, query]) => {
                const r = await fetch(path + '?' + new URLSearchParams(query),
                                      {headers: {Authorization: 'Bearer ' + sessionStorage.getItem('wanlb.token')}});
                return {status: r.status, body: await r.json()};
            }""",
            [path, query],
        )
        return reply["status"], reply["body"]

    def screenshot(self, name: str, tmp: Path, selector: str | None = None) -> Path:
        """The whole page, or the part the element ``selector`` covers (cut from the whole page scrolled to the
        top, so the sticky header stays there instead of over the element)."""
        path = tmp / name
        clip = None
        if selector is not None:
            clip = self.page.evaluate(
                """sel => { scrollTo(0, 0); const r = document.querySelector(sel).getBoundingClientRect();
                   return {x: r.left, y: r.top, width: r.width, height: r.height}; }""",
                selector,
            )
        self.page.screenshot(path=str(path), full_page=True, clip=clip)
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(path, ARTIFACTS / name)
        print(f"\ndashboard screenshot: {path} (copy: {ARTIFACTS / name})")
        return path


@pytest.fixture(scope="module")
def dash(browser: Any) -> Iterator[Dashboard]:
    d = Dashboard(browser, 1280, 900)
    yield d
    d.context.close()


RED, GREY, GREEN = "rgb(220, 38, 38)", "rgb(107, 114, 128)", "rgb(21, 128, 61)"


def test_the_page_asks_for_the_token_and_shows_every_isp(dash: Dashboard) -> None:
    dash.open_and_sign_in(wrong_first=True)
    for isp in ISPS:
        card = dash.card(isp)
        assert card["status"] == "up" and card["badge"] == "up" and card["colour"] == GREEN, card
        assert card["weight"] == 1 and card["share"] == pytest.approx(33.33, abs=0.01), card
        assert card["latency"] is not None and card["loss"] == 0 and card["button"] == "Drain", card
        assert card["since"].startswith("Up since ") and card["since"].endswith(" ago"), card
    # isp3's data quota: a gauge with what the daemon counted (its probes at least), of 1 GiB.
    gauge = dash.page.locator('article[data-isp="isp3"] .quota')
    assert gauge.is_visible() and dash.page.locator('article[data-isp="isp1"] .quota').is_hidden()
    assert re.search(r" of 1(\.0)? GiB \(", str(gauge.text_content())), gauge.text_content()
    assert gauge.get_attribute("data-level") == "ok"
    # Works offline: everything comes from the daemon (no CDN, no web fonts).
    assert dash.requests and all(u.startswith((BASE + "/", "data:")) for u in dash.requests), dash.requests
    assert dash.page.evaluate("sessionStorage.getItem('wanlb.token')") == TOKEN


def test_the_configuration_view_shows_policies_rules_and_probe_timing(gw: LabGateway, dash: Dashboard) -> None:
    """Read-only, from the status the daemon sends: what each policy balances over, what each rule matches and
    where it sends it (with its hits), and each ISP's probes and timing."""
    page = dash.page
    page.wait_for_selector("#config-policies tr[data-policy='video']")
    rows = page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('#config tr[data-policy], #config tr[data-rule],'
             + ' #config tr[data-isp]')].map(r => [r.dataset.policy || r.dataset.rule || r.dataset.isp,
             [...r.cells].map(c => c.textContent)]))"""
    )
    assert rows["default"][:3] == ["default", "weighted", "isp1 (1, 1), isp2 (1, 1), isp3 (1, 1)"], rows
    assert rows["video"][2:] == ["isp1 (1, 3), isp2 (2, 1)", "isp1 1", "default"], rows  # tier 1: isp1 alone
    assert rows["voip"] == ["1", "voip", "dst 198.51.100.0/24 · proto udp · dport 5060", "via isp1", "0"], rows
    assert rows["to-video"][2:4] == ["dst 198.51.100.80/32", "policy video"], rows
    health = gw.view().isp("isp2")
    assert health is not None and health.health.interval_seconds == 0.2
    assert rows["isp2"][1] == "icmp → 203.0.113.10, 203.0.113.30", rows
    assert rows["isp2"][2:5] == ["200 ms / 300 ms", "3 / 5 rounds", "20 rounds, 1 of 2 answering"], rows
    assert rows["isp2 (IPv6)"][1].startswith("icmp → "), rows  # the dual-stack lab probes IPv6 apart


EXPLAIN_PANEL = "section[aria-labelledby='explain-title']"


def shown(decision: dict[str, Any]) -> dict[str, Any]:
    """What the page must show of the API's ``decision``: its one line, rule, candidates, route and steps."""
    rule = decision["rule"]
    if rule:
        matched = f"{rule['index']}. {rule['name']} → {rule['target']}"
    else:  # no rule row when none matched and no policy picked
        matched = "none matched" if decision["policy"] else None
    return {
        "summary": decision["summary"],
        "rule": matched,
        "candidates": [
            f"{c['isp']} ×{c['weight']} ({c['share_percent']:.1f}".removesuffix(".0") + " %)"
            for c in decision["candidates"]
        ],
        "route": decision["route"],
        "steps": decision["steps"],
    }


def ask(dash: Dashboard, src: str, dst: str, proto: str = "tcp", iif: str = "") -> tuple[dict[str, Any], Any]:
    """The page's answer to the explain form and the API's JSON for the same flow, fetched apart: they agree."""
    page = dash.explain(src, dst, proto, iif)
    status, api = dash.api("/api/v1/explain", {"from": src, "to": dst, "proto": proto} | ({"iif": iif} if iif else {}))
    assert status == 200 and len(api["decisions"]) == 1, (status, api)
    assert page["error"] == "" and len(page["decisions"]) == 1, page
    got, want = page["decisions"][0], api["decisions"][0]
    assert {k: got[k] for k in shown(want)} == shown(want), (got, want)
    return got, want


def test_which_isp_would_this_take_answers_what_the_api_does(dash: Dashboard, tmp_path: Path) -> None:
    """The explain form (every ISP up): a flow the `to-video` rule matches names the rule, the policy `video` and
    its one candidate in use (tier 1: isp1); one to the lab's HTTP server matches no rule and is weighted among
    the default policy's three ISPs; one arriving on a WAN is inbound; a bad address shows the API's 400."""
    c1 = client_addr(1)
    got, want = ask(dash, f"{c1}:40000", "198.51.100.80:443")
    assert want["rule"]["name"] == "to-video" and want["policy"] == "video" and want["isp"] == "isp1", want
    assert got["flow"] == f"tcp {c1}:40000 → 198.51.100.80:443 arriving on lan0", got
    assert got["verdict"] == "isp" and got["isp"] == "isp1" and got["headline"] == "isp1", got
    assert got["summary"].startswith("isp1, because rule 2 (to-video) → policy video"), got
    assert got["rule"] == "2. to-video → policy video" and got["policy"] == "video · weighted · tier 1", got
    assert got["candidates"] == ["isp1 ×1 (100 %)"], got  # tier 1 has isp1 alone (isp2 is tier 2)
    dash.page.click(f"{EXPLAIN_PANEL} .decision summary")  # the walk, step by step
    dash.screenshot("dashboard-explain.png", tmp_path, EXPLAIN_PANEL)

    got, want = ask(dash, c1, f"{HTTP_ADDR}:{HTTP_PORT}")
    assert got["rule"] == "none matched" and got["policy"] == "default · weighted · tier 1", got
    assert got["candidates"] == ["isp1 ×1 (33.3 %)", "isp2 ×1 (33.3 %)", "isp3 ×1 (33.3 %)"], got
    assert got["verdict"] == "isp" and got["isp"] is None and got["headline"] == "One of isp1, isp2, isp3", got
    assert got["summary"].startswith("weighted among {isp1×1, isp2×1, isp3×1}"), got

    got, want = ask(dash, "203.0.113.10:443", f"{c1}:40002", iif="wan2")
    assert got["verdict"] == "inbound" and got["headline"] == "Inbound on isp2 (arrives on its WAN)", got
    assert got["flow"].endswith("arriving on wan2") and got["rule"] is None and got["policy"] is None, got

    bad = dash.explain("not-an-address", "198.51.100.80:443", "udp")
    status, api = dash.api("/api/v1/explain", {"from": "not-an-address", "to": "198.51.100.80:443", "proto": "udp"})
    assert status == 400 and "not-an-address" in api["detail"], (status, api)
    assert bad == {"error": f"400: {api['detail']}", "decisions": []}, bad  # and the last answer is gone
    dash.screenshot("dashboard-explain-error.png", tmp_path, EXPLAIN_PANEL)
    assert not dash.errors, dash.errors


def test_an_isps_ipv6_shows_on_its_card_and_dying_alone_is_explained(lab: Lab, gw: LabGateway, dash: Dashboard) -> None:
    """The lab is dual-stack: each card names the ISP's IPv6 mode and state; when only isp3's IPv6 dies,
    its card stays green (IPv4 is up) and says so."""
    head = "isp => document.querySelector(`article[data-isp='${isp}'] .iface`).textContent"
    for isp in ISPS:
        assert dash.page.evaluate(head, isp).endswith("· IPv6 netmap up"), dash.page.evaluate(head, isp)
    assert dash.page.evaluate(head, "isp2").startswith("wan2 → 100.64.2.1 · tier 1")  # the uplink's next hop
    dash.page.evaluate(
        """() => { const card = document.querySelector("article[data-isp='isp3']"); window.isp3States = [];
           new MutationObserver(() => window.isp3States.push(card.dataset.status))
             .observe(card, {attributes: true, attributeFilter: ['data-status']}); }"""
    )  # every state the card takes while only its IPv6 dies
    lab.fail("isp3", "blackhole", family=6)
    try:
        gw.wait_event("isp3", "down", family="6")
        dash.page.wait_for_function(
            "document.querySelector(\"article[data-isp='isp3'] .iface\").textContent.endsWith('IPv6 netmap down')"
        )
        note = dash.page.evaluate("document.querySelector(\"article[data-isp='isp3'] .note\").textContent")
        assert "IPv6 is down (its own probes), IPv4 up." in note, note
        card = dash.card("isp3")
        assert card["status"] == "up" and card["colour"] == GREEN, card
        assert dash.page.evaluate("window.isp3States") == []  # never red, not even for a moment
    finally:
        lab.heal("isp3")
    gw.wait_event("isp3", "up", family="6")


def test_traffic_raises_connections_and_throughput_on_the_cards(lab: Lab, dash: Dashboard) -> None:
    before = {isp: dash.card(isp) for isp in ISPS}
    # Short connections at 50/s from c1 (every ISP gets new ones), and three long streams of 256 KiB/s from c2.
    lab.popen("c1", python_module("wanlb.lab.traffic", "pace", "--every", "0.02", "--duration", "120",
                                  "--target", f"{HTTP_ADDR}:{HTTP_PORT}"), label="pace", stdout=-3)  # fmt: skip
    for k in range(3):
        lab.popen("c2", python_module("wanlb.lab.traffic", "stream", "--duration", "120", "--stall", "120"),
                  label=f"stream{k}", stdout=-3)  # fmt: skip
    deadline = time.monotonic() + 15
    while True:
        now = {isp: dash.card(isp) for isp in ISPS}
        rising = all(
            now[i]["connections"] >= before[i]["connections"] + 20
            and (now[i]["new"] or 0) > 5
            and (now[i]["rx"] or 0) > (before[i]["rx"] or 0)
            and (now[i]["tx"] or 0) > 0
            for i in ISPS
        )
        streams = sum(now[i]["rx"] or 0 for i in ISPS) > 3 * 200_000  # bytes/s: the three streams arrive
        if rising and streams:
            break
        assert time.monotonic() < deadline, (before, now)
        time.sleep(0.25)
    for i in ISPS:
        assert now[i]["text"]["rx"].endswith("bit/s") and now[i]["text"]["connections"] != "—", now[i]
    total = dash.page.evaluate("Number(document.querySelector('#sum-connections').dataset.value)")
    assert total >= sum(now[i]["connections"] for i in ISPS) - 100
    # The charts keep the 1 s samples; the top clients table finds c1 (the paced client) first.
    dash.page.wait_for_function(
        "[...document.querySelectorAll('figure.chart')].filter(f => Number(f.dataset.samples) >= 5).length === 6"
    )
    dash.page.wait_for_function(
        "a => { const r = document.querySelector('#clients tbody tr');"
        " return r && r.dataset.client === a && Number(r.dataset.count) >= 100; }",
        arg=client_addr(1),
        timeout=12_000,
    )


def test_a_blackholed_isp_turns_red_within_2s_of_the_daemon(lab: Lab, gw: LabGateway, dash: Dashboard) -> None:
    lab.fail("isp2", "blackhole")  # both families: the card shows IPv4's state
    seen = dash.wait_status("isp2", "down")
    event = gw.wait_event("isp2", "down", family="4")
    lag = seen - event["time"]
    print(
        f"\nisp2 down: the daemon decided at {event['time']:.3f} (applied after {event['applied_ms']} ms, "
        f"recorded after {event['done_ms']} ms); the card turned red {lag:.3f} s after the decision"
    )
    assert lag <= 2.0, lag
    card = dash.card("isp2")
    assert card["colour"] == RED and card["badge"] == "down", card
    dash.page.wait_for_function(
        "Number(document.querySelector(\"article[data-isp='isp2'] [data-field=loss]\").dataset.value) > 0"
    )  # the probes' loss, from the status after the event
    assert gw.isp_status() == {"isp1": "up", "isp2": "down", "isp3": "up"}
    # The timeline has the failover, with the daemon's reason.
    item = dash.page.wait_for_selector("#timeline li[data-isp='isp2'][data-status='down'][data-family='4']")
    text = item.inner_text()
    assert "failover" in text.lower() and "IPv4" in text and event["reason"][:40] in text, text
    dash.page.wait_for_selector("#timeline li[data-isp='isp2'][data-status='down'][data-family='6']")


def test_a_down_isps_card_says_its_traffic_is_its_probes(dash: Dashboard) -> None:
    """isp2 is still blackholed: its connections were flushed, yet its card shows traffic out — the probes."""
    note = "isp => document.querySelector(`article[data-isp='${isp}'] [data-field=traffic]`)"
    dash.page.wait_for_function(f"({note})('isp2')?.dataset.kind === 'probes'")
    dash.page.wait_for_function(
        "Number(document.querySelector(\"article[data-isp='isp2'] [data-field=tx]\").dataset.value) > 0"
    )
    card = dash.card("isp2")
    assert card["status"] == "down" and card["connections"] == 0 and card["tx"] > 0, card
    assert dash.page.evaluate(f"({note})('isp2').textContent").startswith("Probes only"), card
    assert dash.page.evaluate(f"({note})('isp1').textContent") == ""  # an ISP in use: its traffic is its own


def test_the_drain_button_needs_the_token_and_disables_the_isp(gw: LabGateway, dash: Dashboard, tmp_path: Path) -> None:
    page = dash.page
    page.click("article[data-isp='isp3'] button[data-action='toggle']")
    page.wait_for_selector("#action-dialog[open]")
    assert page.input_value("#action-token") == TOKEN  # remembered from the sign-in (sessionStorage)
    page.fill("#action-token", "wrong-token-wrong-token")
    page.click("#action-submit")
    page.wait_for_function("document.querySelector('#action-error').textContent.includes('401')")
    assert "401" in dash.card("isp3")["error"]
    assert gw.isp_status()["isp3"] == "up"  # refused: nothing changed
    page.fill("#action-token", TOKEN)
    page.fill("#action-reason", "fibre maintenance")
    page.fill("#action-minutes", "30")
    page.click("#action-submit")
    page.wait_for_selector("#action-dialog:not([open])", state="attached")
    dash.wait_status("isp3", "disabled", timeout=5)
    assert gw.isp_status()["isp3"] == "disabled"
    drain = {i["name"]: i["drain"] for i in gw.status()["isps"]}["isp3"]
    assert drain["reason"] == "fibre maintenance" and 1790 < drain["until"] - time.time() <= 1800, drain
    card = dash.card("isp3")
    assert card["colour"] == GREY and card["button"] == "Enable" and card["error"] == "", card
    note = page.wait_for_selector("article[data-isp='isp3'] [data-field=note]:has-text('Drained')").inner_text()
    assert note.startswith("Drained: fibre maintenance. Ends at "), note
    assert "(in 29 min)" in note or "(in 30 min)" in note, note
    page.wait_for_selector("#timeline li[data-isp='isp3'][data-status='disabled']")
    time.sleep(1.5)  # one more stats tick on the charts for the picture
    dash.screenshot("dashboard.png", tmp_path)
    assert not dash.errors, dash.errors


_HOLD_LOOPBACK = """
import socket, time
server = socket.create_server(("127.0.0.1", 18124), backlog=512)
clients = [socket.create_connection(("127.0.0.1", 18124)) for _ in range(300)]
print("open", flush=True)
time.sleep(120)
"""


def test_top_clients_lists_lan_hosts_and_the_gateways_own_addresses_apart(
    lab: Lab, gw: LabGateway, dash: Dashboard
) -> None:
    """300 connections over the gateway's loopback (more than any LAN host has) are listed under "this gateway",
    never among the LAN clients; nor is any of the gateway's WAN or LAN addresses."""
    held = lab.popen("gw", ["python3", "-c", _HOLD_LOOPBACK], label="loopback", stdout=-1, text=True)
    try:
        assert held.stdout is not None and held.stdout.readline().strip() == "open"
        dash.page.wait_for_function(
            "Number(document.querySelector(\"#gateway-clients tr[data-gateway-address='127.0.0.1']\")"
            "?.dataset.count) >= 300",
            timeout=12_000,
        )
        lan = dash.page.evaluate("[...document.querySelectorAll('#clients [data-client]')].map(r => r.dataset.client)")
    finally:
        held.kill()
        held.wait(10)
    own = {"127.0.0.1", LAN_GW} | {a.split("/")[0] for isp in gw.status()["isps"] for a in isp["addresses"]}
    assert lan and not own & set(lan), (lan, own)
    assert client_addr(1) in lan


def test_a_fresh_tab_shows_the_last_day_the_daemon_kept_over_a_reload(
    gw: LabGateway, browser: Any, dash: Dashboard, tmp_path: Path
) -> None:
    """The daemon samples every 10 s; after a reload (SIGHUP) a tab opened now shows, in the 24 h view, samples
    from before it opened: isp2 down, the traffic, the probes."""
    deadline = time.monotonic() + 30
    while not dash.page.evaluate(
        """async () => { const r = await fetch('/api/v1/history', {headers: {Authorization: 'Bearer ' +
             sessionStorage.getItem('wanlb.token')}}); const h = await r.json();
             return h.times.length >= 2 && Boolean(h.isps.isp2 && h.isps.isp2.status.includes('down')); }"""
    ):  # until the daemon has sampled twice (every 10 s), once with isp2 down
        assert time.monotonic() < deadline, "no sample of isp2 down in the daemon's history"
        time.sleep(1)
    reloads = gw.status()["reloads"]
    assert gw.proc is not None
    os.kill(gw.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 10
    while gw.status()["reloads"] == reloads:
        assert time.monotonic() < deadline, "the SIGHUP reload did not happen"
        time.sleep(0.1)
    opened = time.time()
    fresh = Dashboard(browser, 1280, 1400)
    fresh.open_and_sign_in()
    page = fresh.page
    page.click("button[data-range='86400']")
    charts = "() => [...document.querySelectorAll('figure.chart')].map(f => [f.id, f.dataset.samples, f.dataset.oldest,"
    charts += " f.dataset.states])"
    try:
        page.wait_for_function(
            "a => { const f = document.querySelector('#chart-states'); return f.dataset.samples > 0"
            " && JSON.parse(f.dataset.states || '{}').isp2?.includes('down')"
            " && Number(document.querySelector('#chart-connections').dataset.oldest) < a; }",
            arg=opened,
        )
    except sync_api.TimeoutError:
        raise AssertionError((opened, page.evaluate(charts), fresh.errors)) from None
    assert page.evaluate("document.querySelector('#charts-range-title').textContent") == "Last 24 hours"
    for chart in ("connections", "rx", "tx", "rtt", "loss"):
        oldest = page.evaluate(f"Number(document.querySelector('#chart-{chart}').dataset.oldest)")
        assert oldest < opened, (chart, oldest, opened)  # the page itself has seen only what came after
    label = page.evaluate("document.querySelector('#chart-states canvas').getAttribute('aria-label')")
    assert "isp2 down" in label, label
    fresh.screenshot("dashboard-history.png", tmp_path)
    assert not fresh.errors, fresh.errors
    fresh.context.close()


def test_a_phone_sized_window_shows_everything_without_sideways_scrolling(browser: Any, tmp_path: Path) -> None:
    phone = Dashboard(browser, 360, 780)
    phone.open_and_sign_in()  # its own session: sessionStorage is per tab
    page = phone.page
    page.wait_for_selector("#clients tbody tr[data-client]")
    page.wait_for_function("Number(document.querySelector('figure.chart').dataset.samples) >= 3")
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    widths = page.evaluate("[...document.querySelectorAll('article.card')].map(c => c.getBoundingClientRect().right)")
    assert max(widths) <= 360, widths
    # The explain panel with an answer and its walk open (the longest lines of the page) fits too.
    got, _ = ask(phone, f"{client_addr(1)}:40000", "198.51.100.80:443")
    assert got["rule"] == "2. to-video → policy video", got
    page.click(f"{EXPLAIN_PANEL} .decision summary")
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    right = page.evaluate(f'document.querySelector("{EXPLAIN_PANEL}").getBoundingClientRect().right')
    assert right <= 360, right
    phone.screenshot("dashboard-explain-phone.png", tmp_path, EXPLAIN_PANEL)
    phone.screenshot("dashboard-phone.png", tmp_path)
    assert not phone.errors, phone.errors
    phone.context.close()
