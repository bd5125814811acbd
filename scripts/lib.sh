# Shared by scripts/setup.d/*.sh: idempotent installs of Debian packages.
# shellcheck shell=bash

# apt_install NAME...: install the packages that are missing; nothing when all are there.
# No service a package brings starts during the installation (policy-rc.d: edgeshot runs
# its own processes, e.g. HAProxy, and nothing may hold their ports behind its back), and
# another apt run holding the lock is waited for, not failed on. Says what it installs
# through the calling script's say(), when it has one.
apt_install() {
  local missing=() p
  for p in "$@"; do
    # (no `dpkg-query | grep -q` under pipefail: an early exit SIGPIPEs the writer)
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" = "install ok installed" ] \
      || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if declare -F say >/dev/null; then say "installing ${missing[*]}"; else echo "  installing ${missing[*]}"; fi
  local prc=/usr/sbin/policy-rc.d own_prc=0 rc=0
  if [ ! -e "$prc" ]; then  # ours until the end of the install, even when interrupted
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    printf '#!/bin/sh\nexit 101\n' >"$prc" && chmod 0755 "$prc" && own_prc=1
  fi
  local apt=(apt-get -o DPkg::Lock::Timeout=600 -y -q)
  DEBIAN_FRONTEND=noninteractive "${apt[@]}" install --no-install-recommends "${missing[@]}" >/dev/null \
    || { "${apt[@]}" update >/dev/null \
         && DEBIAN_FRONTEND=noninteractive "${apt[@]}" install --no-install-recommends "${missing[@]}" >/dev/null; } \
    || rc=$?
  [ "$own_prc" = 0 ] || { rm -f "$prc"; trap - EXIT; }
  return "$rc"
}

is_root() { [ "$(id -u)" -eq 0 ]; }
