"""nftables adapter: every change is one ``nft -f`` transaction (atomic), reads use ``nft -j``."""

from __future__ import annotations

import json
import shutil
import subprocess

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


def delete_table() -> bool:
    """Remove our table (and only ours).  Returns whether it existed."""
    if table_text() is None:
        return False
    _run(["delete", "table", FAMILY, TABLE])
    return True
