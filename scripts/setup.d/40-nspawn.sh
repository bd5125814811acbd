#!/usr/bin/env bash
# Throwaway edge servers for the configuration tests (docs/architecture.md, "Tests and
# benchmarks"): debootstrap builds a Debian root file system, systemd-nspawn
# boots it in a network namespace, ssh reaches it, a copy of the cached
# root per server. Idempotent: a second run installs nothing.
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
say() { echo "nspawn: $*"; }

if ! is_root; then
  say "skipped: not root (booting throwaway servers needs root); tests/configure will skip"
  exit 0
fi

want=(debootstrap systemd-container openssh-client dpkg-dev iproute2 ca-certificates)
apt_install "${want[@]}"
say "ok (${want[*]} installed)"
