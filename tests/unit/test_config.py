"""Config validation: every malformed file is refused with FILE:LINE: field: message."""

from __future__ import annotations

import textwrap

import pytest

from wanlb.config import ConfigError, load_config, parse_config, parse_duration

GOOD = """\
lan:
  interfaces: [lan0]
isps:
  - name: fiber
    interface: wan1
    gateway: 100.64.1.1
    weight: 3
    health: { targets: [203.0.113.10], interval: 200ms, timeout: 1s, down_after: 3, up_after: 5 }
  - name: lte
    interface: wan2
    gateway: 100.64.2.1
balance:
  algorithm: weighted
mark_mask: 0xff00
local_traffic: true
control:
  socket: /run/wanlb/wanlb.sock
"""


def test_good_config_leaves_marks_and_tables_to_the_runtime_allocation() -> None:
    """Marks and tables left out stay None: wanlb.runtime.allocate gives them by ISP name (test_runtime.py)."""
    cfg = parse_config(GOOD, "good.yaml")
    assert [(i.name, i.mark, i.table) for i in cfg.isps] == [("fiber", None, None), ("lte", None, None)]
    assert cfg.isps[0].health.interval == pytest.approx(0.2)
    assert cfg.isps[0].health.timeout == pytest.approx(1.0)
    assert cfg.isps[1].weight == 1 and cfg.isps[1].tier == 1 and cfg.isps[1].snat == "masquerade"
    assert cfg.helpers == ("ftp",)


def test_explicit_marks_and_tables_are_kept_as_given() -> None:
    text = GOOD.replace("    weight: 3\n", "    weight: 3\n    mark: 0x200\n    table: 201\n")
    cfg = parse_config(text)
    assert [(i.mark, i.table) for i in cfg.isps] == [(0x200, 201), (None, None)]


def test_helpers_are_validated() -> None:
    cfg = parse_config(GOOD + "helpers: [ftp, sip, h323]\n")
    assert cfg.helpers == ("ftp", "sip", "h323")
    with pytest.raises(ConfigError, match=r"helpers\[1\]: must be ftp, tftp"):
        parse_config(GOOD + "helpers: [telnet]\n", "h.yaml")


@pytest.mark.parametrize(
    ("duration", "seconds"), [("200ms", 0.2), ("1s", 1.0), ("5m", 300.0), ("2h", 7200.0), (3, 3.0), ("1.5s", 1.5)]
)
def test_durations(duration: object, seconds: float) -> None:
    assert parse_duration(duration) == pytest.approx(seconds)


def _replace(old: str, new: str) -> str:
    assert old in GOOD, old
    return GOOD.replace(old, new, 1)


# (config text, expected line, expected field path, a word the message must contain)
BAD = [
    (_replace("  algorithm: weighted\n", "  algorithm: weighted\n  colour: red\n"), 14, "balance.colour", "unknown"),
    (
        _replace("    weight: 3\n", "    weight: three\n"),
        7,
        "isps[fiber].weight",
        "expected a whole number 1..1000, got 'three'",
    ),
    (_replace("    weight: 3\n", "    weight: 0\n"), 7, "isps[fiber].weight", "must be 1..1000, got 0"),
    (_replace("    weight: 3\n", "    weight: 1001\n"), 7, "isps[fiber].weight", "must be 1..1000, got 1001"),
    (
        _replace("  - name: lte\n", "  - name: fiber\n"),
        9,
        "isps[2].name",
        "duplicate name 'fiber' (also used by isps[1])",
    ),
    (_replace("    interface: wan2\n", "    interface: wan1\n"), 10, "isps[lte].interface", "duplicate"),
    (
        _replace("    weight: 3\n", "    weight: 3\n    mark: 0x300\n").replace(
            "    gateway: 100.64.2.1\n", "    gateway: 100.64.2.1\n    mark: 0x300\n"
        ),
        13,
        "isps[lte].mark",
        "duplicate",
    ),
    (
        _replace("    gateway: 100.64.2.1\n", "    gateway: 100.64.2.1\n    mark: 0x1\n"),
        12,
        "isps[lte].mark",
        "outside",
    ),
    (
        _replace("    weight: 3\n", "    weight: 3\n    table: 300\n").replace(
            "    gateway: 100.64.2.1\n", "    gateway: 100.64.2.1\n    table: 300\n"
        ),
        13,
        "isps[lte].table",
        "duplicate",
    ),
    (_replace("    gateway: 100.64.1.1\n", "    gateway: 100.64.1.300\n"), 6, "isps[fiber].gateway", "IPv4"),
    (_replace("interval: 200ms", "interval: 20 parsecs"), 8, "isps[fiber].health.interval", "duration"),
    (_replace("targets: [203.0.113.10]", "targets: [203.0.113]"), 8, "isps[fiber].health.targets[1]", "IPv4"),
    (
        "lan:\n  interfaces: [lan0]\nisps: []\n",
        3,
        "isps",
        "at least 1",
    ),
    (_replace("  - name: fiber\n", "  - name: Fiber\n"), 4, "isps[1].name", "must match"),
    (_replace("  - name: fiber\n", "  - name: averyveryverylongname\n"), 4, "isps[1].name", "must match"),
    (_replace("mark_mask: 0xff00\n", "mark_mask: 0xf0f0\n"), 14, "mark_mask", "contiguous"),
    (_replace("    interface: wan1\n", "    interface: lan0\n"), 5, "isps[fiber].interface", "LAN"),
    (
        _replace("    interface: wan1\n", "    interface: this-name-is-too-long\n"),
        5,
        "isps[fiber].interface",
        "interface name",
    ),
    (
        _replace("local_traffic: true\n", "local_traffic: maybe\n"),
        15,
        "local_traffic",
        "expected true or false, got 'maybe'",
    ),
    (_replace("  interfaces: [lan0]\n", "  interfaces: []\n"), 2, "lan.interfaces", "at least 1"),
    (
        _replace("    gateway: 100.64.2.1\n", "    gateway: 100.64.2.1\n    snat: sometimes\n"),
        12,
        "isps[lte].snat",
        "must be masquerade, none or an IPv4 address, got 'sometimes'",
    ),
    (
        _replace("    gateway: 100.64.2.1\n", "    gateway: dhcp\n"),
        11,
        "isps[lte].gateway",
        "write auto for a next hop",
    ),
    (_replace("down_after: 3", "down_after: -1"), 8, "isps[fiber].health.down_after", "must be 1..100, got -1"),
    (_replace("mark_mask: 0xff00\n", "mark_mask: 0x1\n"), 14, "mark_mask", "holds only"),
    (
        _replace("    gateway: 100.64.2.1\n", "    gateway: 100.64.2.1\n    table: 254\n"),
        12,
        "isps[lte].table",
        "reserved",
    ),
    (_replace("{ targets:", "{ method: tcp, targets:"), 8, "isps[fiber].health", "needs a port"),
    (_replace("{ targets:", "{ method: icmp, port: 80, targets:"), 8, "isps[fiber].health", "has no port"),
    (
        _replace("{ targets:", "{ method: ping, targets:"),
        8,
        "isps[fiber].health.method",
        "must be icmp, tcp, http, https or dns, got 'ping'",
    ),
    (_replace("local_traffic: true\n", "local_traffic: true\nhooks: [notify.sh]\n"), 16, "hooks[1]", "absolute"),
]


def test_an_invalid_isp_does_not_also_report_an_empty_isp_list() -> None:
    text = "lan:\n  interfaces: [lan0]\nisps:\n  - name: a\n    interface: wan0\n    gateway: 1.2.3.4\n    weight: 0\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "one.yaml")
    assert str(info.value).splitlines() == ["one.yaml:7: isps[a].weight: must be 1..1000, got 0"]


@pytest.mark.parametrize(("text", "line", "path", "word"), BAD, ids=[b[2] + ":" + b[3] for b in BAD])
def test_bad_config_names_file_line_and_field(text: str, line: int, path: str, word: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "bad.yaml")
    report = str(info.value)
    expected_prefix = f"bad.yaml:{line}: {path}:"
    assert any(row.startswith(expected_prefix) for row in report.splitlines()), report
    assert word.lower() in report.lower(), report


def test_yaml_syntax_error_has_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config("lan:\n  interfaces: [lan0\nisps: x\n", "broken.yaml")
    assert str(info.value).startswith("broken.yaml:")
    assert "YAML syntax error" in str(info.value)


def test_duplicate_yaml_key_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(GOOD + "mark_mask: 0xff\n", "dup.yaml")
    assert "duplicate key 'mark_mask'" in str(info.value)
    assert str(info.value).startswith("dup.yaml:18:")


def test_empty_and_missing_files(tmp_path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty"):
        load_config(empty)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


def test_every_error_is_reported_at_once() -> None:
    text = textwrap.dedent(
        """\
        lan: {interfaces: [lan0]}
        isps:
          - {name: a, interface: wan1, gateway: 1.2.3.4, weight: 0}
          - {name: b, interface: wan2, gateway: nope}
        """
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, "multi.yaml")
    rows = str(info.value).splitlines()
    assert "multi.yaml:3: isps[a].weight:" in rows[0]
    assert "multi.yaml:4: isps[b].gateway:" in rows[1]
