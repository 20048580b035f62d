"""The daemon: :mod:`executor` carries out the fleet's effects, :mod:`surface` answers clients (the read
model and the commands), :mod:`main` is ``wanlb run`` (its life: sockets, signals, loops)."""

from wanlb.daemon.executor import Daemon
from wanlb.daemon.main import run

__all__ = ["Daemon", "run"]
