#!/usr/bin/env bash
# HAProxy (the data path of every edgepoint and of the global dispatcher) and wrk
# (the benchmarks' load generator), both from Debian (docs/architecture.md, "The path of a
# request"). Debian 12's haproxy is 2.6 built with the Prometheus exporter
# (PROMEX). Only the binaries are used: the package's own service is stopped and
# disabled so that nothing listens on port 80 behind the project's back; edgeshot
# runs its own HAProxy processes with their own configuration.
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
say() { echo "haproxy: $*"; }

if ! is_root; then
  if command -v haproxy >/dev/null 2>&1; then
    say "not root: using the installed $(haproxy -v 2>/dev/null | awk 'NR == 1 {print $3}')"
  else
    say "skipped: not root; edgepoints will serve through the (slower) activator only"
  fi
  exit 0
fi

apt_install haproxy wrk  # the package's service does not start (lib.sh: policy-rc.d)

# The packaged service (if an init system started it) must not hold port 80.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  systemctl disable --now haproxy.service >/dev/null 2>&1 || true
elif [ -x /etc/init.d/haproxy ] && [ -f /run/haproxy.pid ]; then
  /etc/init.d/haproxy stop >/dev/null 2>&1 || true
fi

# (no `cmd | grep -q` / `| head` under pipefail: an early exit SIGPIPEs the writer)
v="$(haproxy -v 2>/dev/null | awk 'NR == 1 {print $3}')"
features="$(haproxy -vv 2>/dev/null || true)"
if [[ "$features" != *PROMEX* ]]; then
  say "WARNING: haproxy $v lacks the Prometheus exporter (PROMEX); /metrics will omit it"
fi
say "ok (haproxy $v at $(command -v haproxy), wrk at $(command -v wrk))"
