#!/usr/bin/env bash
# HAProxy (the data path of every edgepoint and of the global dispatcher) and wrk
# (the benchmarks' load generator), both from Debian (DESIGN.md, "The path of a
# request"). Debian 12's haproxy is 2.6 built with the Prometheus exporter
# (PROMEX). Only the binaries are used: the package's own service is stopped and
# disabled so that nothing listens on port 80 behind the project's back; edgeshot
# runs its own HAProxy processes with their own configuration.
set -euo pipefail
say() { echo "haproxy: $*"; }

if [ "$(id -u)" -ne 0 ]; then
  if command -v haproxy >/dev/null 2>&1; then
    say "not root: using the installed $(haproxy -v 2>/dev/null | awk 'NR == 1 {print $3}')"
  else
    say "skipped: not root; edgepoints will serve through the (slower) activator only"
  fi
  exit 0
fi

missing=()
for p in haproxy wrk; do
  [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" = "install ok installed" ] || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  # policy-rc.d: no service starts during the installation (there is no init here anyway).
  prc=/usr/sbin/policy-rc.d
  had_prc=0; [ -e "$prc" ] && had_prc=1
  [ "$had_prc" = 1 ] || { printf '#!/bin/sh\nexit 101\n' >"$prc"; chmod 0755 "$prc"; }
  trap '[ "$had_prc" = 1 ] || rm -f "$prc"' EXIT
  apt=(apt-get -o DPkg::Lock::Timeout=600 -y -q)  # wait for another apt run, do not fail
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install --no-install-recommends "${missing[@]}" >/dev/null \
    || { "${apt[@]}" update >/dev/null \
         && DEBIAN_FRONTEND=noninteractive "${apt[@]}" install --no-install-recommends "${missing[@]}" >/dev/null; }
fi

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
