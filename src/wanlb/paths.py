"""Where wanlb's files are by default, and how a client finds the daemon: one place for both CLIs and ``top``.

Light on purpose (no pydantic, no rich): ``wanlb conntrack …`` and ``wanlb status`` start with it.
"""

from __future__ import annotations

from typing import Any

DEFAULT_CONFIG_PATH = "/etc/wanlb/wanlb.yaml"
DEFAULT_SOCKET = "/run/wanlb/wanlb.sock"
QUICK_READ_LIMIT = 1 << 20  # the config file's own limit (wanlb.config.MAX_CONFIG_BYTES)


def read_yaml(path: str) -> Any:
    """The file's YAML as plain data, unvalidated (the daemon and ``check`` validate); None if unreadable,
    not YAML or larger than a config may be."""
    import yaml

    try:
        with open(path, "rb") as fh:
            data = fh.read(QUICK_READ_LIMIT + 1)
    except OSError:
        return None
    if len(data) > QUICK_READ_LIMIT:
        return None
    try:
        return yaml.load(data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError:
        return None


def find_socket(socket_path: str | None, config_path: str) -> str:
    """The daemon's control socket: ``--socket`` if given, else the config's ``control.socket`` as written in
    the file (even an invalid config names it: ``wanlb reload`` of a broken file must reach the daemon so it
    can refuse it and say why), else the default."""
    if socket_path:
        return socket_path
    try:
        return str(read_yaml(config_path)["control"]["socket"])
    except (TypeError, KeyError):
        return DEFAULT_SOCKET
