#!/usr/bin/env bash
# Remove what scripts/install.sh installed (venv, symlink, unit); the configuration stays.
# Same as `install.sh --uninstall`; takes its options (--prefix, --cleanup, --no-systemctl, ...).
# Without the checkout: /opt/wanlb/share/wanlb/install.sh --uninstall (a copy is kept there).
exec bash "$(dirname "${BASH_SOURCE[0]}")/install.sh" --uninstall "$@"
