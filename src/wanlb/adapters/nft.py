"""nftables adapter: every change is one ``nft -f`` transaction (atomic), reads use ``nft -j``."""

from __future__ import annotations

import errno
import json
import shutil
import socket
import struct
import subprocess

from wanlb.adapters.nftcounters import CounterReader
from wanlb.nftsync import FAMILY, TABLE


class NftError(RuntimeError):
    """nft refused a transaction; the kernel kept the previous ruleset."""


def nft_path() -> str:
    path = shutil.which("nft")
    if path is None:
        raise NftError("the 'nft' command was not found: install nftables (Debian: apt-get install nftables)")
    return path


def _run(args: list[str], stdin: str | None = None) -> str:
    proc = subprocess.run([nft_path(), *args], input=stdin, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise NftError(proc.stderr.strip() or f"nft {' '.join(args)} failed with exit code {proc.returncode}")
    return proc.stdout


def apply(transaction: str) -> None:
    """Apply a ruleset transaction atomically: all of it or, on any error, none of it."""
    _run(["-f", "-"], stdin=transaction)


def check(transaction: str) -> None:
    """Ask the kernel whether a transaction would be accepted, without applying it."""
    _run(["-c", "-f", "-"], stdin=transaction)


def table_text() -> str | None:
    """Our table as nft prints it, or None when it does not exist."""
    try:
        return _run(["list", "table", FAMILY, TABLE])
    except NftError:
        return None


def table_json() -> list[dict] | None:
    """Our table in nft's JSON form (its ``nftables`` array), or None when it does not exist."""
    proc = subprocess.run(
        [nft_path(), "-j", "list", "table", FAMILY, TABLE], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        if "No such file or directory" in proc.stderr:
            return None
        raise NftError(proc.stderr.strip() or f"nft -j list table failed with exit code {proc.returncode}")
    return json.loads(proc.stdout)["nftables"]


_counter_reader: CounterReader | None = None


def counters() -> dict[str, tuple[int, int]] | None:
    """Our table's named counters, name → (packets, bytes), or None when the table does not exist: one netlink
    dump (:mod:`wanlb.adapters.nftcounters`) on a socket kept open, dropped and made afresh after an error."""
    global _counter_reader
    try:
        _counter_reader = _counter_reader or CounterReader(TABLE)
        return _counter_reader.read()
    except OSError as exc:
        if _counter_reader is not None:
            _counter_reader.close()
        _counter_reader = None
        if exc.errno == errno.ENOENT:
            return None
        raise NftError(f"reading the counters: {exc}") from None


_NFNL_SUBSYS_NFTABLES = 10
_NFT_MSG_GETGEN = 16
_NFTA_GEN_ID = 1
_NETLINK_NETFILTER = 12


def generation() -> int | None:
    """The kernel's nftables ruleset generation (NFT_MSG_GETGEN), or None if it cannot be asked.

    It changes with every committed transaction by anyone in this network namespace, and never with
    the datapath's own updates (counters, dynamic set elements): equal generations mean the ruleset
    we last read is still the ruleset.  One netlink round trip instead of ``nft -j list table``.
    """
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_NETFILTER) as sock:
            sock.settimeout(1.0)
            sock.bind((0, 0))
            mtype = (_NFNL_SUBSYS_NFTABLES << 8) | _NFT_MSG_GETGEN
            request = struct.pack("=IHHII", 20, mtype, 1, 1, 0) + struct.pack("=BBH", socket.AF_UNSPEC, 0, 0)
            sock.send(request)
            reply = sock.recv(4096)
    except OSError:
        return None
    if len(reply) < 20:
        return None
    length, rtype = struct.unpack_from("=IH", reply)
    if rtype != ((_NFNL_SUBSYS_NFTABLES << 8) | 15):  # NFT_MSG_NEWGEN (an error reply is NLMSG_ERROR)
        return None
    off = 20  # nlmsghdr + nfgenmsg
    while off + 4 <= min(length, len(reply)):
        alen, atype = struct.unpack_from("=HH", reply, off)
        if alen < 4:
            return None
        if atype & 0x3FFF == _NFTA_GEN_ID and alen >= 8:
            return int(struct.unpack_from(">I", reply, off + 4)[0])
        off += (alen + 3) & ~3
    return None
