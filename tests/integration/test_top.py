"""`wanlb top` on a real terminal (tmux, 120×40, then resized to 80×24) in the lab's gateway namespace, against a
real daemon with three ISPs and real traffic: every ISP renders, the numbers move, at 80×24 every panel is there
and nothing is cut, the daemon going away and coming back is shown, and `q` exits 0 leaving the alternate screen
and the terminal settings as they were.

The pane runs an interactive bash, and top is typed into it, as an operator would: bash keeps the
terminal settings a program leaves behind when it exits normally, so `stty -g` before and after top
tells whether top restored them.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from wanlb.lab.gateway import LabGateway
from wanlb.lab.lab import Lab, module_env
from wanlb.lab.topology import HTTP_ADDR, HTTP_PORT

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux"),
]

ISPS = ("isp1", "isp2", "isp3")
ALL_UP = dict.fromkeys(ISPS, "up")


class Tmux:
    """A detached tmux server of our own (its own socket), one 120×40 window running bash."""

    def __init__(self, name: str) -> None:
        self.base = ["tmux", "-L", name, "-f", "/dev/null"]
        env = module_env() | {"PS1": "$ ", "HISTFILE": "/dev/null"}
        subprocess.run([*self.base, "new-session", "-d", "-s", "top", "-x", "120", "-y", "40",
                        "bash", "--norc", "--noprofile", "-i"], check=True, env=env)  # fmt: skip
        self.socket = self.tmux("display-message", "-p", "#{socket_path}").strip()

    def tmux(self, *args: str) -> str:
        return subprocess.run([*self.base, *args], check=True, capture_output=True, text=True).stdout

    def type(self, line: str) -> None:
        self.tmux("send-keys", "-t", "top", "-l", line)
        self.tmux("send-keys", "-t", "top", "Enter")

    def key(self, key: str) -> None:
        self.tmux("send-keys", "-t", "top", "-l", key)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "top")

    def alternate(self) -> bool:
        return self.tmux("display-message", "-p", "-t", "top", "#{alternate_on}").strip() == "1"

    def wait(self, what: Callable[[], bool], timeout: float = 10.0, why: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not what():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {why}; screen:\n{self.screen()}")
            time.sleep(0.1)

    def output_of(self, command: str, name: str) -> str:
        """The output of a one-line ``command``, as the pane shows it (marked so the typed line never matches)."""
        self.type(f'm={name}; echo "$({command}) :$m-done"')
        pattern = re.compile(rf"^(.*) :{re.escape(name)}-done$", re.M)
        self.wait(lambda: pattern.search(self.screen()) is not None, why=f"the output of {command}")
        return str(pattern.findall(self.screen())[-1])

    def kill(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True, check=False)
        if self.socket:
            Path(self.socket).unlink(missing_ok=True)


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab.up(name=f"top{os.getpid()}{uuid.uuid4().hex[:4]}", isps=3, clients=1) as lab:
        yield lab


def rows(screen: str) -> dict[str, list[str]]:
    """The ISP table's rows (the first row naming each ISP, with a share: not the history rows)."""
    out: dict[str, list[str]] = {}
    for line in screen.splitlines():
        tokens = line.split()
        if tokens and tokens[0] in ISPS and tokens[0] not in out and any(t.endswith("%") for t in tokens):
            out[tokens[0]] = tokens
    return out


def test_top_shows_the_live_daemon_survives_its_absence_and_quits_cleanly(lab: Lab) -> None:
    gw = LabGateway(lab)
    rules = [
        {"name": "web-isp2", "dst": [f"{HTTP_ADDR}/32"], "via": "isp2"},
        {"name": "unused", "dst": ["198.51.100.99/32"], "via": "isp1"},
    ]
    gw.write(lambda cfg: cfg.__setitem__("rules", rules))
    gw.start()
    term = Tmux(f"wanlb-top-{lab.name}")
    try:
        gw.wait_for(ALL_UP)
        before = term.output_of("stty -g", "before")
        top = [sys.executable, "-m", "wanlb.cli", "top", "-c", str(gw.config)]
        term.type(f"ip netns exec {lab.ns('gw')} {shlex.join(top)}; echo top-exited-$?")
        term.wait(term.alternate, why="the alternate screen")
        term.wait(lambda: set(rows(term.screen())) == set(ISPS), why="every ISP")
        screen = term.screen()
        assert "pid " in screen and "web-isp2" in screen and "unused" in screen and "events (" in screen

        # Real traffic (a connection every 20 ms, all pinned to isp2 by the rule): the numbers move.
        pace = lab.popen("c1", [sys.executable, "-m", "wanlb.lab.traffic", "pace", "--every", "0.02", "--duration",
                                "5", "--target", f"{HTTP_ADDR}:{HTTP_PORT}"], label="pace", stdout=-3)  # fmt: skip

        def number(token: str) -> float:
            return 0.0 if token == "-" else float(token)

        def busy() -> bool:
            isp2 = rows(term.screen()).get("isp2", [])
            # isp2's new connections per second (column 7) and bytes in per second (column 8: "1.2 kB/s").
            return len(isp2) > 8 and number(isp2[6]) >= 10 and number(isp2[7]) > 0

        term.wait(busy, timeout=10, why="isp2 busy")
        moving = rows(term.screen())["isp2"][5:8]  # connections, new/s, rx/s
        term.wait(lambda: rows(term.screen())["isp2"][5:8] != moving, timeout=5, why="isp2's numbers to change")
        hits = next(line for line in term.screen().splitlines() if line.split()[:1] == ["web-isp2"]).split()
        assert int(hits[3]) > 0 and number(hits[4]) > 0, hits  # the rule's hits and hits/s
        assert next(line for line in term.screen().splitlines() if line.split()[:1] == ["unused"]).split()[3] == "0"
        assert re.search("[▂▃▄▅▆▇█]", term.screen())  # the sparklines rise
        pace.wait(15)

        # At 80×24 (the terminal resized under it: SIGWINCH) every panel is there, nothing is cut.
        term.tmux("resize-window", "-t", "top", "-x", "80", "-y", "24")
        term.wait(lambda: len(term.screen().splitlines()[0]) <= 80 and set(rows(term.screen())) == set(ISPS),
                  why="every ISP at 80 columns")  # fmt: skip
        narrow = term.screen()
        assert "…" not in narrow, narrow
        header = next(line.split() for line in narrow.splitlines() if line.split()[:2] == ["isp", "state"])
        assert {"share", "conns", "new/s", "rx/s", "tx/s", "loss", "rtt"} <= set(header), narrow
        assert "conns (top" in narrow and "web-isp2" in narrow and "events (" in narrow, narrow
        term.tmux("resize-window", "-t", "top", "-x", "120", "-y", "40")  # and back: it uses the room again
        term.wait(lambda: len(term.screen().splitlines()[0]) > 80, why="top at 120 columns again")

        # The daemon goes away: top says so and keeps asking; it comes back: top shows it again.
        gw.stop(cleanup=False)
        term.wait(lambda: "daemon not answering" in term.screen(), why="daemon not answering")
        assert term.alternate()
        gw.start()
        term.wait(lambda: "daemon not answering" not in term.screen(), why="the daemon back")
        assert set(rows(term.screen())) == set(ISPS)

        term.key("q")
        exited = re.compile(r"^top-exited-(\d+)$", re.M)
        term.wait(lambda: exited.search(term.screen()) is not None, why="top to exit")
        assert exited.findall(term.screen()) == ["0"]
        assert not term.alternate()
        after = term.output_of("stty -g", "after")
        assert after == before  # echo, line editing: all as before top
    finally:
        term.kill()
        gw.stop(cleanup=True)
