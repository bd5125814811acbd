#!/usr/bin/env bash
# Throwaway edge servers for the configuration tests (DESIGN.md, "Tests and
# benchmarks"): debootstrap builds a Debian root file system, systemd-nspawn
# boots it in a network namespace, ssh reaches it, a copy of the cached
# root per server. Idempotent: a second run installs nothing.
set -euo pipefail
say() { echo "nspawn: $*"; }

if [ "$(id -u)" -ne 0 ]; then
  say "skipped: not root (booting throwaway servers needs root); tests/configure will skip"
  exit 0
fi

want=(debootstrap systemd-container openssh-client dpkg-dev iproute2 ca-certificates)
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  say "ok (${want[*]} installed)"
  exit 0
fi
say "installing ${missing[*]}"
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
  || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
say "ok (${want[*]} installed)"
