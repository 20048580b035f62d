"""The dashboard of an HA node in a real browser: what the page says about the pair when the pair changes.

The unit tests of the status model and the HA pair tests (test_ha_pair.py) show that the daemons *know* a split
brain or a lost peer; only a page in a browser shows that an operator looking at the dashboard is *told*: the
summary's HA cell (``#sum-ha``: this node's role and its peer's) and the banner lines ``renderHa`` in app.js
writes.  So: an HA lab (``lab up --ha``), both daemons with the api section ``lab up --ha --api`` writes (each on
its gateway's own LAN address, one token), the real keepalived and conntrackd they run, and Debian's chromium
driven by Playwright in LAN client c1's namespace (the wrapper script test_dashboard.py explains) on gw1's
dashboard at http://192.168.77.2:9180/.  The pair is then broken as test_ha_pair.py breaks it: VRRP dropped
in gw2 (a split brain), gw2's daemon stopped (a peer not heard).

The token is needed for reads (``public_read: false``), as in the lab.  The split brain's screenshot goes to
the test's tmp dir and to ``test-artifacts/`` in the checkout (ignored by git).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import CHROMIUM, chromium_in, module_lab

from wanlb.lab.cli import api_section
from wanlb.lab.gateway import LabGateway
from wanlb.lab.lab import Lab
from wanlb.lab.pair import peer, role, start_pair, stop_pair, wait_until

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"{CHROMIUM} is missing: apt-get install chromium"),
    pytest.mark.skipif(
        not (shutil.which("keepalived") and shutil.which("conntrackd")), reason="needs keepalived and conntrackd"
    ),
]

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: pip install -e '.[test]' (no browser download needed)"
)

PORT = 9180
TOKEN = "ha-dashboard-token-for-the-lab-0123456789"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
SEEN_WITHIN = 10.0
"""Seconds the page gets to show a change of the pair (the daemons see one in about a second; this only bounds
the wait, it asserts no timing)."""
# test_ha_pair.py's split brain: in gw2, gw1's adverts dropped (as a LAN fault between them would); gw2 takes over.
DROP_VRRP = "table inet vrrp_lost { chain in { type filter hook input priority -300; ip protocol vrrp drop; }; }"

lab = module_lab(ha=True, isps=2)


@pytest.fixture(scope="module")
def token(lab: Lab) -> Path:
    """The API's token file (mode 0600: the daemon refuses a looser one), shared by both nodes as in the lab."""
    path = lab.dir / "api.token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def pair(lab: Lab, token: Path) -> Iterator[tuple[LabGateway, LabGateway]]:
    """Both daemons with the api section `lab up --ha --api` writes, gw1 master and gw2 backup hearing each
    other; afterwards both stopped (cleanup), the lab as built."""
    gws = (LabGateway(lab, "gw1"), LabGateway(lab, "gw2"))

    def with_api(gw: LabGateway, cfg: dict[str, Any]) -> None:
        cfg.update(yaml.safe_load(api_section(PORT, token, lab.topology.lan_address(gw.node))))

    try:
        start_pair(gws, with_api)
        yield gws
    finally:
        stop_pair(lab, gws)


@pytest.fixture(scope="module")
def browser(lab: Lab) -> Iterator[Any]:
    """Chromium in c1's namespace: the page reaches the gateway as a browser on the LAN would."""
    with chromium_in(lab) as launched:
        yield launched


class HaDashboard:
    """One tab on a node's dashboard, signed in; what its HA cell and banner say, and any script errors."""

    def __init__(self, browser: Any, base: str) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, color_scheme="light")
        self.page = self.context.new_page()
        self.page.set_default_timeout(15_000)
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(base + "/")
        self.page.wait_for_selector("#auth-dialog[open]")  # reads need the token
        self.page.fill("#auth-token", TOKEN)
        self.page.click("#auth-submit")
        self.page.wait_for_selector("#auth-dialog:not([open])", state="attached")
        self.page.wait_for_selector("#sum-ha-box:not([hidden])")
        self.page.wait_for_function("document.querySelector('#conn').dataset.state === 'live'")

    def ha_cell(self) -> str:
        """The summary's HA cell as shown: this node's role, then ``· peer NODE ROLE-OR-STATE``."""
        return str(self.page.text_content("#sum-ha"))

    def banner(self) -> str | None:
        """The banner's text, or None while it is hidden."""
        shown = self.page.evaluate("(() => { const b = document.querySelector('#banner'); return !b.hidden; })()")
        return str(self.page.text_content("#banner")) if shown else None

    def wait_text(self, selector: str, text: str, present: bool = True) -> None:
        """Wait until the element is shown with ``text`` in it (or, ``present=False``, no longer is): the page
        polls its own DOM, so a change is seen as it renders; an AssertionError with what it shows instead if
        that takes longer than SEEN_WITHIN."""
        try:
            self.page.wait_for_function(
                "([sel, text, present]) => { const el = document.querySelector(sel);"
                " return (!el.hidden && el.textContent.includes(text)) === present; }",
                arg=[selector, text, present],
                timeout=SEEN_WITHIN * 1000,
            )
        except sync_api.TimeoutError:
            seen = self.page.text_content(selector)
            raise AssertionError(f"{selector}: {text!r} {'never' if present else 'still'} shown: {seen!r}") from None

    def screenshot(self, name: str, tmp: Path) -> Path:
        """The whole page into the test's tmp dir, copied to test-artifacts/ where a person looks for it."""
        path = tmp / name
        self.page.screenshot(path=str(path), full_page=True)
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copy(path, ARTIFACTS / name)
        print(f"\nHA dashboard screenshot: {path} (copy: {ARTIFACTS / name})")
        return path


@pytest.fixture
def dash(lab: Lab, browser: Any, pair: tuple[LabGateway, LabGateway]) -> Iterator[HaDashboard]:
    """gw1's dashboard, opened once the pair is up (a fresh tab per test: no state carried over)."""
    d = HaDashboard(browser, f"http://{lab.topology.lan_address('gw1')}:{PORT}")
    try:
        yield d
    finally:
        d.context.close()


def test_the_ha_cell_shows_this_nodes_role_and_its_peers(dash: HaDashboard) -> None:
    dash.wait_text("#sum-ha", "peer gw2 backup")
    cell = dash.ha_cell()
    assert cell.startswith("gw1 master") and "peer gw2 backup" in cell, cell
    assert dash.page.get_attribute("#sum-ha", "data-role") == "master"
    assert dash.banner() is None  # a healthy pair needs nobody
    assert not dash.errors, dash.errors


def test_a_split_brain_is_in_the_banner_until_it_ends(
    dash: HaDashboard, pair: tuple[LabGateway, LabGateway], tmp_path: Path
) -> None:
    """VRRP dropped in gw2 (test_ha_pair.py's split brain): gw2 becomes master too, and gw1's page says so in
    the banner and its HA cell; with the adverts flowing again gw2 yields and the banner goes."""
    gw1, gw2 = pair
    gw2.run("nft", "-f", "-", stdin=DROP_VRRP)
    try:
        wait_until("gw2 master too", lambda: role(gw2) == "master", timeout=10)
        dash.wait_text("#banner", "Split brain")
        banner = dash.banner()
        assert banner is not None and "Split brain: gw1 and gw2 are both master" in banner, banner
        dash.wait_text("#sum-ha", "peer gw2 master")
        assert dash.ha_cell().startswith("gw1 master"), dash.ha_cell()
        # The timeline has it too, as the pair's event (no ISP's name or colour), with the daemon's reason.
        item = dash.page.wait_for_selector("#timeline li[data-event='split-brain'][data-status='started']")
        head = item.query_selector(".ev-head")
        assert head is not None and str(head.text_content()).startswith("HA pair"), item.inner_html()
        assert item.query_selector(".swatch") is None and "is master too" in item.inner_text(), item.inner_html()
        dash.screenshot("ha-dashboard-split-brain.png", tmp_path)
    finally:
        gw2.run("nft", "delete", "table", "inet", "vrrp_lost")
    wait_until("gw2 yields", lambda: role(gw2) == "backup", timeout=10)
    wait_until("gw1 says the split brain ended", lambda: not peer(gw1)["split_brain"], timeout=5)
    dash.wait_text("#banner", "Split brain", present=False)
    dash.wait_text("#sum-ha", "peer gw2 backup")
    assert dash.banner() is None, dash.banner()
    assert not dash.errors, dash.errors


def test_a_stopped_peer_daemon_is_in_the_banner_as_not_heard(
    dash: HaDashboard, pair: tuple[LabGateway, LabGateway]
) -> None:
    """gw2's daemon stopped (its keepalived and conntrackd with it): gw1, still master, hears no more hellos and
    its page says the peer is lost, in the HA cell and the banner."""
    gw1, gw2 = pair
    gw2.stop(cleanup=True)
    wait_until("gw1 says the peer is lost", lambda: peer(gw1)["state"] == "lost", timeout=10)
    dash.wait_text("#banner", "HA peer gw2 not heard")
    dash.wait_text("#sum-ha", "peer gw2 lost")
    assert dash.ha_cell().startswith("gw1 master"), dash.ha_cell()
    assert role(gw1) == "master"
    assert not dash.errors, dash.errors
