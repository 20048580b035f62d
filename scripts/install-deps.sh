#!/usr/bin/env bash
# Install everything wanlb, its lab and its tests need on Debian 12 (run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
need=()
# dnsmasq-base: the binary alone (the dnsmasq package would also start a system DNS service); the lab's
# ISP routers use it as their DHCP server. dhcpcd-base: the lab gateway's DHCP client (no service either).
# isc-dhcp-server: the lab ISPs' DHCPv6 prefix delegation (dnsmasq has none); its services are disabled
# below, the lab runs dhcpd by hand inside its namespaces.
for tool in nft:nftables conntrack:conntrack iperf3:iperf3 ip:iproute2 openssl:openssl curl:curl dnsmasq:dnsmasq-base \
    dhcpcd:dhcpcd-base dhcpd:isc-dhcp-server; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool#*:}")
done
[ -x /usr/bin/time ] || need+=(time)  # GNU time: peak memory of `wanlb check` in the bad-input tests
# The API tests: a real Prometheus scrapes the daemon; the dashboard test drives Debian's chromium.
for tool in prometheus:prometheus chromium:chromium tmux:tmux; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool#*:}")
done
# scripts/install.sh builds its venv with Debian's python3 (python3 -m venv needs python3-venv's ensurepip);
# tests/integration/test_install.py checks the unit with systemd-analyze (from the systemd package; it
# runs without systemd as init) and runs the daemon under setpriv (util-linux, always there).
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3 python3-venv)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# keepalived (VRRP) and conntrackd (conntrack state sync): the HA pair; wanlb renders their configs and runs
# them itself, so their packages' own services must never start here (they would speak VRRP / sync on the
# host's networks): a policy-rc.d refuses every service start while apt runs, and under systemd they are disabled.
for tool in keepalived:keepalived conntrackd:conntrackd; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || need+=("${tool#*:}")
done
if [ "${#need[@]}" -gt 0 ]; then
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ -d /run/systemd/system ]; then  # a machine with systemd running: none of these services for its own networks
  systemctl disable --now isc-dhcp-server.service isc-dhcp-server6.service keepalived.service conntrackd.service \
    >/dev/null 2>&1 || true
fi
python3 -m pip --version >/dev/null 2>&1 || { apt-get update -qq; apt-get install -y -qq python3-pip python3-venv >/dev/null; }
# Debian's own python3 refuses system-wide pip installs (PEP 668); wanlb is a system daemon, so we
# accept that for this host. Older pips ignore the variable.
# The test extra includes playwright (the Python package and its bundled driver only): the dashboard test
# points it at Debian's /usr/bin/chromium, so never run `playwright install` (it would download browsers).
PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install -q --disable-pip-version-check -e '.[test]'
