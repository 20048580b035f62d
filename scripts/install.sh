#!/usr/bin/env bash
# Install wanlb on a gateway, upgrade it in place (run it again), or remove it (--uninstall).
#
#   sudo bash scripts/install.sh                 # install / upgrade from this checkout
#   sudo bash scripts/install.sh --uninstall     # remove what it installed; the config stays
#
# What it creates (each path can be moved by an option or environment variable):
#   /opt/wanlb/                     a Python virtual environment (Debian's python3 -m venv) holding wanlb
#                                   (pip-installed from this checkout, not editable) and its dependencies;
#                                   also share/doc/wanlb (docs), share/wanlb (example, alert rules, manifest, this script)
#   /usr/local/sbin/wanlb           symlink to /opt/wanlb/bin/wanlb
#   /etc/systemd/system/wanlb.service   packaging/wanlb.service with the paths above filled in
#   /etc/wanlb/ (0755) and /etc/wanlb/wanlb.yaml, the example config, only if there is none (never
#                                   overwritten, never removed)
# Nothing is installed with the system pip, so Debian's own Python packages are left alone (PEP 668).
# `systemctl daemon-reload` runs only if systemd is the running init and the unit went to a systemd
# unit directory. It neither enables nor (re)starts the service: see docs/operations.md.
#
# Needs: root, Debian's python3 (>= 3.11) with python3-venv, and either PyPI (dependencies and the
# setuptools build backend) or --wheels DIR: a directory made beforehand, on a machine with network, by
#   python3 -m pip wheel -w DIR 'setuptools>=68' /path/to/wanlb-checkout
# with the gateway's Python version and architecture (pydantic-core and PyYAML are compiled wheels);
# then nothing is downloaded: pip runs with --no-index --find-links DIR.
set -euo pipefail
umask 022 # the venv, the unit and the example config are world-readable, whatever root's umask

usage() {
  cat <<'EOF'
usage: install.sh [--prefix DIR] [--bin-dir DIR] [--unit-dir DIR] [--config-dir DIR]
                  [--python PYTHON] [--wheels DIR] [--no-systemctl]
       install.sh --uninstall [--cleanup] [--prefix DIR] [--no-systemctl]

  --prefix DIR      virtual environment (env WANLB_PREFIX; default /opt/wanlb)
  --bin-dir DIR     where the `wanlb` symlink goes (env WANLB_BIN_DIR; default /usr/local/sbin)
  --unit-dir DIR    where wanlb.service goes (env WANLB_UNIT_DIR; default /etc/systemd/system)
  --config-dir DIR  config directory (env WANLB_CONFIG_DIR; default /etc/wanlb)
  --python PYTHON   interpreter for the venv (env WANLB_PYTHON; default /usr/bin/python3)
  --wheels DIR      install offline from this wheel directory (env WANLB_WHEELS)
  --no-systemctl    never call systemctl (also when systemd runs)
  --uninstall       remove the venv, the symlink and the unit; keep the config. The other
                    paths are read from what the install recorded unless given.
  --cleanup         with --uninstall: first `wanlb stop --cleanup` (remove wanlb's nft table,
                    ip rules and routes, restore sysctls). Without it the kernel is not touched.
EOF
}

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "wanlb install: $*"; }

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PREFIX=${WANLB_PREFIX:-/opt/wanlb}
BIN_DIR=${WANLB_BIN_DIR:-}
UNIT_DIR=${WANLB_UNIT_DIR:-}
CONFIG_DIR=${WANLB_CONFIG_DIR:-}
PYTHON=${WANLB_PYTHON:-}
WHEELS=${WANLB_WHEELS:-}
USE_SYSTEMCTL=yes
ACTION=install
CLEANUP=no

while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) PREFIX=${2:?--prefix needs a directory}; shift 2 ;;
    --bin-dir) BIN_DIR=${2:?--bin-dir needs a directory}; shift 2 ;;
    --unit-dir) UNIT_DIR=${2:?--unit-dir needs a directory}; shift 2 ;;
    --config-dir) CONFIG_DIR=${2:?--config-dir needs a directory}; shift 2 ;;
    --python) PYTHON=${2:?--python needs an interpreter}; shift 2 ;;
    --wheels) WHEELS=${2:?--wheels needs a directory}; shift 2 ;;
    --no-systemctl) USE_SYSTEMCTL=no; shift ;;
    --uninstall) ACTION=uninstall; shift ;;
    --cleanup) CLEANUP=yes; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done

[ "$(id -u)" -eq 0 ] || die "run as root (it installs a system service)"
[ "$CLEANUP" = no ] || [ "$ACTION" = uninstall ] || die "--cleanup goes with --uninstall"

# Paths end up in a unit file and a sed expression: keep them plain.
check_path() {
  case "$2" in
    /*) ;;
    *) die "$1 must be an absolute path: $2" ;;
  esac
  [[ "$2" =~ ^[A-Za-z0-9._/+-]+$ ]] || die "$1 has characters this script does not handle: $2"
  [[ "$2" != *//* && "$2" != */ && "$2" != */./* && "$2" != */../* ]] || die "$1 is not a clean path: $2"
}
check_path --prefix "$PREFIX"
case "$PREFIX" in
  /bin | /boot | /dev | /etc | /home | /lib* | /opt | /proc | /root | /run | /sbin | /srv | /sys | /tmp | /usr | /usr/* | /var)
    die "--prefix $PREFIX is a system directory; use a directory of its own such as /opt/wanlb" ;;
esac

MANIFEST="$PREFIX/share/wanlb/install-manifest"
UNIT_MARK="# Installed by wanlb's scripts/install.sh"

# What an earlier install recorded (key=value lines), for upgrades and --uninstall.
recorded() {
  [ -f "$MANIFEST" ] || return 0
  local key value
  while IFS='=' read -r key value; do
    if [ "$key" = "$1" ]; then
      printf '%s\n' "$value"
      return 0
    fi
  done <"$MANIFEST"
}
BIN_DIR=${BIN_DIR:-$(recorded bin_dir)}
UNIT_DIR=${UNIT_DIR:-$(recorded unit_dir)}
CONFIG_DIR=${CONFIG_DIR:-$(recorded config_dir)}
BIN_DIR=${BIN_DIR:-/usr/local/sbin}
UNIT_DIR=${UNIT_DIR:-/etc/systemd/system}
CONFIG_DIR=${CONFIG_DIR:-/etc/wanlb}
check_path --bin-dir "$BIN_DIR"
check_path --unit-dir "$UNIT_DIR"
check_path --config-dir "$CONFIG_DIR"
UNIT="$UNIT_DIR/wanlb.service"
LINK="$BIN_DIR/wanlb"

systemd_running() { [ -d /run/systemd/system ]; } # what sd_booted(3) checks
# systemctl only for a unit directory systemd reads, never for a scratch directory (the tests).
systemctl_ok() {
  [ "$USE_SYSTEMCTL" = yes ] && systemd_running || return 1
  case "$UNIT_DIR" in
    /etc/systemd/system | /run/systemd/system | /usr/local/lib/systemd/system | /lib/systemd/system | /usr/lib/systemd/system) return 0 ;;
  esac
  return 1
}

ours_link() { [ -L "$LINK" ] && [ "$(readlink "$LINK")" = "$PREFIX/bin/wanlb" ]; }
ours_unit() { [ -f "$UNIT" ] && grep -qF "$UNIT_MARK" "$UNIT"; }

do_uninstall() {
  if [ ! -f "$MANIFEST" ] && [ -e "$PREFIX" ]; then
    die "$PREFIX holds no wanlb install manifest ($MANIFEST): not removing it"
  fi
  if systemctl_ok && systemctl cat wanlb.service >/dev/null 2>&1; then
    say "stopping and disabling wanlb.service"
    systemctl disable --now wanlb.service || true
  fi
  if [ "$CLEANUP" = yes ]; then
    if [ -x "$PREFIX/bin/wanlb" ]; then
      say "removing wanlb's nft table, ip rules, routes and restoring sysctls (wanlb stop --cleanup)"
      "$PREFIX/bin/wanlb" stop --cleanup --config "$CONFIG_DIR/wanlb.yaml" || die "wanlb stop --cleanup failed; nothing removed"
    else
      say "no $PREFIX/bin/wanlb: --cleanup skipped"
    fi
  fi
  if ours_unit; then
    # `systemctl enable` links; remove ours if systemctl could not (systemd not running).
    local wants
    for wants in "$UNIT_DIR"/*.wants/wanlb.service; do
      if [ -L "$wants" ] && [ "$(readlink "$wants")" = "$UNIT" ]; then rm -f "$wants"; fi
    done
    rm -f "$UNIT"
    say "removed $UNIT"
  elif [ -e "$UNIT" ]; then
    say "left $UNIT: not installed by this script"
  fi
  if ours_link; then
    rm -f "$LINK"
    say "removed $LINK"
  elif [ -e "$LINK" ] || [ -L "$LINK" ]; then
    say "left $LINK: not a link to $PREFIX/bin/wanlb"
  fi
  if [ -e "$PREFIX" ]; then
    rm -rf "$PREFIX"
    say "removed $PREFIX"
  fi
  if systemctl_ok; then systemctl daemon-reload; fi
  [ ! -d "$UNIT_DIR/wanlb.service.d" ] || say "left $UNIT_DIR/wanlb.service.d (your drop-ins)"
  say "kept $CONFIG_DIR (your configuration)"
  [ "$CLEANUP" = yes ] || say "the kernel was not touched: wanlb's nft table, ip rules and routes stay until reboot (--cleanup removes them)"
}

pick_python() {
  if [ -z "$PYTHON" ]; then
    if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON=$(command -v python3 || true); fi
  fi
  [ -n "$PYTHON" ] && command -v "$PYTHON" >/dev/null || die "no python3 (Debian: apt-get install python3 python3-venv)"
  "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$PYTHON is older than Python 3.11"
}

# The venv is reused (upgrade in place) while it works and runs the same Python as $PYTHON; after a
# Python upgrade (a Debian release upgrade) it is recreated.
make_venv() {
  local want have=""
  want=$("$PYTHON" -c 'import sys; print(sys.version)')
  if [ -x "$PREFIX/bin/python" ]; then have=$("$PREFIX/bin/python" -c 'import sys; print(sys.version)' 2>/dev/null || true); fi
  if [ -n "$have" ] && [ "$have" = "$want" ] && "$PREFIX/bin/python" -m pip --version >/dev/null 2>&1; then
    say "upgrading in place: $PREFIX"
    return
  fi
  if [ -e "$PREFIX" ] && [ ! -f "$MANIFEST" ] && [ -n "$(ls -A "$PREFIX")" ]; then
    die "$PREFIX exists, is not empty and holds no wanlb install: choose another --prefix"
  fi
  say "creating the virtual environment $PREFIX ($PYTHON, Python ${want%% *})"
  if ! "$PYTHON" -m venv --clear "$PREFIX"; then
    die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  fi
}

do_install() {
  [ -f "$SRC/pyproject.toml" ] && [ -d "$SRC/src/wanlb" ] || die "$SRC is not a wanlb checkout"
  [ -z "$WHEELS" ] || [ -d "$WHEELS" ] || die "--wheels $WHEELS is not a directory"
  if [ -e "$LINK" ] || [ -L "$LINK" ]; then
    ours_link || die "$LINK exists and is not a link to $PREFIX/bin/wanlb (an older install, pip install -e?): remove it first"
  fi
  if [ -e "$UNIT" ]; then
    ours_unit || die "$UNIT exists and was not installed by this script: move it away first"
  fi
  pick_python
  make_venv
  # Recorded first, so that even a failed pip run below leaves an install --uninstall recognises.
  mkdir -p "$PREFIX/share/wanlb"
  {
    echo "bin_dir=$BIN_DIR"
    echo "unit_dir=$UNIT_DIR"
    echo "config_dir=$CONFIG_DIR"
    echo "source=$SRC"
  } >"$MANIFEST.new"
  mv -f "$MANIFEST.new" "$MANIFEST"

  # Build from a copy: a non-editable install builds in the source tree, and the checkout stays clean.
  local version
  build=$(mktemp -d)
  trap 'rm -rf "$build"' EXIT
  tar -C "$SRC" --exclude=__pycache__ --exclude='*.egg-info' -cf - pyproject.toml README.md src | tar -C "$build" -xf -
  local pip=("$PREFIX/bin/python" -m pip install --disable-pip-version-check --no-input --quiet --upgrade)
  if [ -n "$WHEELS" ]; then pip+=(--no-index --find-links "$WHEELS"); fi
  say "installing wanlb and its dependencies into $PREFIX${WHEELS:+ (offline, from $WHEELS)}"
  "${pip[@]}" "$build"
  version=$("$PREFIX/bin/wanlb" --version) || die "$PREFIX/bin/wanlb does not run"

  local share="$PREFIX/share/wanlb" doc="$PREFIX/share/doc/wanlb"
  mkdir -p "$share/examples" "$doc"
  cp "$SRC"/examples/*.yaml "$share/examples/"
  cp "$SRC/README.md" "$SRC"/docs/*.md "$doc/"
  cp "$SRC/scripts/install.sh" "$share/install.sh" # to uninstall without the checkout
  cp "$SRC/packaging/wanlb-alerts.yml" "$share/"    # Prometheus alerting rules (docs/operations.md)

  mkdir -p "$BIN_DIR"
  ln -sfn "$PREFIX/bin/wanlb" "$LINK.new" && mv -Tf "$LINK.new" "$LINK"

  mkdir -p "$UNIT_DIR"
  {
    echo "$UNIT_MARK ($version, from $SRC); it is replaced on upgrade: use \`systemctl edit wanlb\`."
    # Settings only: the comments keep describing the default layout.
    sed -e "/^#/!s|/opt/wanlb|$PREFIX|g" -e "/^#/!s|/etc/wanlb|$CONFIG_DIR|g" "$SRC/packaging/wanlb.service"
  } >"$UNIT.new"
  chmod 0644 "$UNIT.new"
  local unit_changed=yes
  if cmp -s "$UNIT.new" "$UNIT"; then unit_changed=no; fi
  mv -f "$UNIT.new" "$UNIT"

  if [ ! -d "$CONFIG_DIR" ]; then install -d -m 0755 "$CONFIG_DIR"; fi
  if [ -e "$CONFIG_DIR/wanlb.yaml" ] || [ -L "$CONFIG_DIR/wanlb.yaml" ]; then
    say "kept $CONFIG_DIR/wanlb.yaml"
  else
    install -m 0644 "$SRC/examples/wanlb.yaml" "$CONFIG_DIR/wanlb.yaml"
    say "wrote the example config $CONFIG_DIR/wanlb.yaml: edit it, then \`wanlb check\`"
  fi

  if systemctl_ok; then
    if [ "$unit_changed" = yes ]; then systemctl daemon-reload; fi
    if systemctl is-active --quiet wanlb.service; then
      say "wanlb.service is running the old code: \`systemctl restart wanlb\` (connections keep flowing)"
    fi
  elif [ "$USE_SYSTEMCTL" = yes ] && ! systemd_running; then
    say "systemd is not running here: no daemon-reload"
  fi
  say "installed $version: $LINK -> $PREFIX/bin/wanlb, $UNIT"
}

"do_$ACTION"
