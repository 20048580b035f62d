"""The write half of the conntrack(8) drop-in, without a kernel: what -U changes, the requests -U/-I/-A send,
how -R files are read, and which command lines are conntrack(8)'s (semantics checked against conntrack 1.4.7)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from wanlb import conntrack_compat as compat
from wanlb.ctnetlink import codec
from wanlb.ctnetlink import constants as C
from wanlb.ctnetlink.entry import Entry
from wanlb.ctnetlink.portid import Senders
from wanlb.ctnetlink.update import Change

E = Entry(family=2, proto=6, src=bytes([10, 0, 0, 5]), dst=bytes([1, 1, 1, 1]), sport=1000, dport=443,
          reply_src=bytes([1, 1, 1, 1]), reply_dst=bytes([10, 0, 0, 5]), reply_sport=443, reply_dport=1000,
          tcp_state=3, mark=0x201, status=C.IPS_SEEN_REPLY | C.IPS_CONFIRMED, timeout=100)  # fmt: skip


def _attrs(msg: bytes) -> dict[int, bytes]:
    return {t: bytes(msg[o : o + n]) for t, o, n in codec.attrs(msg, 20, len(msg))}


def test_mark_is_set_under_its_mask_not_selected() -> None:
    change = Change(mark=0x300, mark_mask=0xFF00)
    assert change.new_mark(0x201) == 0x301 and change.new_mark(None) == 0x300
    assert change.alters(E)
    assert not change.alters(E._replace(mark=0x301))  # already there: conntrack sends nothing and counts nothing


def test_status_bits_are_only_added_and_a_no_op_change_alters_nothing() -> None:
    assert not Change(status=C.IPS_SEEN_REPLY).alters(E)
    assert Change(status=C.IPS_ASSURED).alters(E)
    assert not Change().alters(E)
    assert Change(timeout=7).alters(E) and not Change(timeout=100).alters(E)
    assert Change(tcp_state=7).alters(E) and not Change(tcp_state=3).alters(E)


def test_update_request_finds_the_entry_by_tuple_and_zone_and_masks_the_mark_in_the_kernel() -> None:
    zoned = E._replace(zone=7, orig_zone=None)
    msg = Change(mark=0x300, mark_mask=0xFF00, status=C.IPS_ASSURED, timeout=60, tcp_state=7).encode(zoned)
    _len, mtype, flags, _seq, _pid = codec.NLMSGHDR.unpack_from(msg)
    assert mtype & 0xFF == C.IPCTNL_MSG_CT_NEW and not flags & (C.NLM_F_CREATE | C.NLM_F_EXCL)
    assert msg[16] == C.AF_INET  # the entry's own family: conntrack 1.4.7 sends AF_UNSPEC without -f and fails
    got = _attrs(msg)
    assert struct.unpack(">H", got[C.CTA_ZONE])[0] == 7  # conntrack 1.4.7 leaves the zone out: ENOENT
    assert struct.unpack(">I", got[C.CTA_MARK])[0] == 0x300 and struct.unpack(">I", got[C.CTA_MARK_MASK])[0] == 0xFF00
    assert struct.unpack(">I", got[C.CTA_STATUS])[0] == E.status | C.IPS_ASSURED
    assert struct.unpack(">I", got[C.CTA_TIMEOUT])[0] == 60
    assert C.CTA_TUPLE_ORIG in got and C.CTA_TUPLE_REPLY not in got and C.CTA_PROTOINFO in got


def _built(line: str) -> object:
    return compat.build_any(compat.parse(line.split()))


def test_update_selects_by_tuple_and_sets_mark_status_state_timeout() -> None:
    flt, change, _out = _built("-U -s 10.0.0.0/8 -p tcp --dport 443 -m 0x300/0xff00 -u ASSURED --state TIME_WAIT -t 9")
    assert flt.mark is None and flt.status is None and flt.states is None and flt.dport == 443
    assert flt.src is not None and str(flt.src) == "10.0.0.0/8"
    assert change == Change(mark=0x300, mark_mask=0xFF00, status=C.IPS_ASSURED, tcp_state=7, timeout=9)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("-U -w 7 -m 1", "Illegal option `--zone' with this command"),
        ("-U -j -m 1", "Illegal option `--any-nat' with this command"),
        ("-L -t 5", "Illegal option `--timeout' with this command"),
        ("-U --state ESTABLISHED", "--state needs -p tcp"),
        ("-U -m x", "is not a number"),
        ("-U -t -1", "out of range"),
        ("-I -s 1.1.1.1 -d 2.2.2.2 -p udp --sport 1 --dport 2", "You need to supply the `--timeout' option"),
        ("-I -s 1.1.1.1 -p udp --sport 1 --dport 2 -t 5", "you have to specify `--src' and `--dst'"),
        ("-I -s 1.1.1.1 -d 2.2.2.2 -p udp -t 5", "you have to specify `--sport' and `--dport'"),
        ("-I -s 1.1.1.1 -d 2.2.2.2 -p tcp --sport 1 --dport 2 -t 5", "You need to supply the `--state' option"),
        ("-I -s 1.1.1.1 -d 2.2.2.2 -p icmp -t 5", "You need to supply the `--icmp-type' option"),
        ("-I -s 1.1.1.1 -d 2.2.2.2 -p gre -t 5", "you have to specify `--srckey' and `--dstkey'"),
        ("-I -s fd00::1 -d 2.2.2.2 -p udp --sport 1 --dport 2 -t 5", "mismatched address family"),
        ("-I -s 1.1.1.1 -d 2.2.2.2 -p udp --sport 1 --dport 2 -t 5 -f ipv4", "Illegal option `--family'"),
        ("-I -s 1.1.1.0/24 -d 2.2.2.2 -p udp --sport 1 --dport 2 -t 5", "one address"),
        ("-I -s 1.1.1.1 -d 2.2.2.2 -p sctp --sport 1 --dport 2 -t 5", "not supported"),
        ("-I -s 1.1.1.1 -d 2.2.2.2 -p icmp --icmp-type 3 --icmp-code 0 --icmp-id 1 -t 5", "no reply type"),
    ],
)
def test_bad_write_command_lines_are_usage_errors(line: str, message: str) -> None:
    with pytest.raises(compat.Usage, match=message.replace("`", ".").replace("'", ".")):
        _built(line)


def test_create_inverts_the_tuple_it_was_not_given() -> None:
    e = _built("-I -s 1.1.1.1 -d 2.2.2.2 -p icmp --icmp-type 8 --icmp-code 0 --icmp-id 77 -t 50 -m 0x301/0xff00")
    assert (e.reply_src, e.reply_dst) == (bytes([2, 2, 2, 2]), bytes([1, 1, 1, 1]))
    assert (e.reply_icmp_type, e.reply_icmp_code, e.reply_icmp_id) == (0, 0, 77)
    assert e.mark == 0x301 and e.timeout == 50  # the mask is ignored when creating, as conntrack does
    r = _built("-I -r 3.3.3.3 -q 4.4.4.4 -p udp --reply-port-src 5 --reply-port-dst 6 -t 10 -u ASSURED,SEEN_REPLY")
    assert (r.src, r.dst, r.sport, r.dport) == (bytes([4, 4, 4, 4]), bytes([3, 3, 3, 3]), 6, 5)
    assert r.status == C.IPS_ASSURED | C.IPS_SEEN_REPLY
    t = _built("-I -s 1.1.1.1 -d 2.2.2.2 -p tcp --sport 1 --dport 2 --state ESTABLISHED -t 5 -w 3 --orig-zone 4")
    assert (t.tcp_state, t.zone, t.orig_zone, t.reply_zone, t.reply_sport) == (3, 3, 4, None, 2)


def test_load_file_lines_are_tokenized_like_conntrack(tmp_path: Path) -> None:
    path = tmp_path / "batch"
    create = "-I -s 1.1.1.1 -d 2.2.2.2 -p udp --sport 1 --dport 2 -t 5"
    path.write_text(f'# a comment\n\n   \t{create}\n-D  "-s"  1.1.1.1\n-F\n')
    lines = compat.load_file(str(path))
    assert [(n, p.command) for n, p, _b in lines] == [(3, "create"), (4, "delete"), (5, "flush")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-F\n-L\n", ":2: cannot use command `-L' with --load-file"),
        ("-I -s 1.1.1.x -d 2.2.2.2 -p udp --sport 1 --dport 2 -t 5\n", ":1: -s '1.1.1.x' is not an address"),
        ('-D -s "1.1.1.1\n', ":1: unterminated quote"),
        ("-D -s " + "1" * 10240 + "\n", ":1: line longer than"),
    ],
)
def test_a_bad_load_file_line_is_refused_before_anything_runs(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "batch"
    path.write_text(text)
    with pytest.raises(compat.Usage, match=message.replace("`", ".").replace("'", ".")):
        compat.load_file(str(path))


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["count", "--by", "isp", "-c", "/etc/wanlb/wanlb.yaml"], False),  # -c is wanlb's config here, not secmark
        (["--config", "x.yaml", "delete", "--isp", "a", "-c", "x.yaml"], False),
        (["-c", "x.yaml", "list"], False),
        (["-L", "-c", "5"], True),
        (["-R", "file"], True),
        (["-U", "-m", "1"], True),
        (["list", "-p", "tcp"], False),
    ],
)
def test_a_native_subcommand_is_never_taken_for_a_conntrack_command_line(argv: list[str], expected: bool) -> None:
    assert compat.is_compat(argv, native=("list", "count", "watch", "delete", "get", "stats")) is expected


def test_the_sender_of_an_event_is_named_from_proc(tmp_path: Path) -> None:
    """A /proc built by hand: the socket of port 4000000 (not a PID) is fd 3 of PID 77, whose comm has a ')'."""
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "netlink").write_text(
        "sk               Eth Pid        Groups   Rmem     Wmem     Dump  Locks    Drops    Inode\n"
        "0000000000000000 0   4000000    00000000 0        0        0     2        0        111\n"
        "0000000000000000 12  4000000    00000000 0        0        0     2        0        222\n"
    )
    (tmp_path / "77" / "fd").mkdir(parents=True)
    (tmp_path / "77" / "fd" / "3").symlink_to("socket:[222]")
    (tmp_path / "77" / "stat").write_text("77 (my)prog) S 1 77 77 0 -1\n")
    (tmp_path / "78" / "fd").mkdir(parents=True)
    senders = Senders(str(tmp_path))
    assert senders.suffix(0) == ""
    assert senders.suffix(4000000) == " [USERSPACE] portid=4000000 progname=my"  # up to the first ')', as conntrack
    assert senders.suffix(5) == " [USERSPACE] portid=5"  # no such socket (its owner exited)
