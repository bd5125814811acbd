#!/usr/bin/env bash
# promtool, from Debian's prometheus package: the tests check the alert rules that
# `edgeshot monitoring` writes with `promtool check rules` (and its scrape configuration
# with `promtool check config`). Only the binary is used: the package's service does not
# start (lib.sh: policy-rc.d) and nothing of edgeshot needs a Prometheus server here.
set -euo pipefail
say() { echo "prometheus: $*"; }
# shellcheck source=../lib.sh
source "$(cd "$(dirname "$0")/.." && pwd)/lib.sh"

if ! is_root; then
  if command -v promtool >/dev/null 2>&1; then
    say "not root: using the installed $(promtool --version 2>&1 | awk 'NR == 1 {print $3}')"
  else
    say "skipped: not root; tests/monitoring's promtool checks will skip (they fail under CI=true)"
  fi
  exit 0
fi
apt_install prometheus
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
say "ok (promtool $(promtool --version 2>&1 | awk 'NR == 1 {print $3}') at $(command -v promtool))"
