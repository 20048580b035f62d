"""SSE resume (``wanlb.api.Hub``): events and reloads carry ids; a client reconnecting with ``Last-Event-ID`` gets
what it missed from a bounded buffer, or a ``gap`` message when that is older than the buffer or not this
daemon's."""

from __future__ import annotations

import json

import pytest

from wanlb.api import REPLAY, Hub


def _fields(message: str) -> dict[str, str]:
    out = {}
    for line in message.strip("\n").split("\n"):
        name, _, value = line.partition(": ")
        out[name] = value
    return out


def _ids(messages: list[str]) -> list[str]:
    return [_fields(m).get("id", "") for m in messages]


def test_events_and_reloads_have_ids_stats_do_not_and_a_client_gets_what_it_missed() -> None:
    hub = Hub("c0ffee00")
    queue, backlog = hub.subscribe(None)
    hub.publish("event", {"isp": "a", "event": "down"})
    hub.publish("stats", {"isps": {}})
    hub.publish("reload", {"ok": True})
    sent = [queue.get_nowait() for _ in range(3)]
    assert backlog == [] and _ids(sent) == ["c0ffee00-1", "", "c0ffee00-2"]
    assert _fields(sent[0])["event"] == "event" and json.loads(_fields(sent[0])["data"])["isp"] == "a"
    hub.publish("event", {"isp": "a", "event": "up"})
    hub.publish("event", {"isp": "b", "event": "down"})
    _, missed = hub.subscribe("c0ffee00-2")  # the client saw up to the reload
    assert _ids(missed) == ["c0ffee00-3", "c0ffee00-4"]
    assert [json.loads(_fields(m)["data"])["isp"] for m in missed] == ["a", "b"]
    assert hub.subscribe("c0ffee00-4")[1] == []  # nothing missed


def test_an_id_older_than_the_buffer_or_of_another_daemon_gets_a_gap_marker_then_what_is_kept() -> None:
    hub = Hub("c0ffee00")
    for i in range(REPLAY + 10):
        hub.publish("event", {"n": i})
    _, missed = hub.subscribe("c0ffee00-3")
    gap = _fields(missed[0])
    assert gap["event"] == "gap" and "id" not in gap
    assert json.loads(gap["data"]) == {"last_event_id": "c0ffee00-3", "oldest": f"c0ffee00-{11}",
                                       "reason": f"older than the last {REPLAY} messages kept"}  # fmt: skip
    assert len(missed) == 1 + REPLAY and _ids(missed)[-1] == f"c0ffee00-{REPLAY + 10}"
    _, missed = hub.subscribe("deadbeef-5")  # before a restart: ids of another run
    assert json.loads(_fields(missed[0])["data"])["reason"] == "not this daemon's (it restarted since)"
    assert len(missed) == 1 + REPLAY
    _, missed = hub.subscribe(f"c0ffee00-{REPLAY + 11}")  # ahead of what was sent: not ours either
    assert _fields(missed[0])["event"] == "gap"


@pytest.mark.parametrize("bad", ["", "x", "c0ffee00", "c0ffee00-", "c0ffee00--1", "C0FFEE00-1", "c0ffee00-1 ",
                                 "c0ffee00-" + "9" * 40])  # fmt: skip
def test_a_malformed_last_event_id_is_refused(bad: str) -> None:
    hub = Hub("c0ffee00")
    with pytest.raises(ValueError, match="Last-Event-ID"):
        hub.subscribe(bad)
    assert hub.clients == set()  # refused: nothing subscribed
