#!/usr/bin/env bash
# CRIU >= 4.2 for appshots (docs/architecture.md, "Instances are pods").
#
# Debian 12's CRIU 3.17 fails `criu check` on current kernels and 4.1 cannot
# dump TCP sockets here, so unless the machine already has a CRIU >= 4.2 that
# passes `criu check`, build 4.2.1 from Debian's sid *source* package:
#   - the deb-src line reuses the URI of the machine's own Debian sources
#     (no host name is written into the repository) and lives in a private
#     apt configuration under the cache, so the machine's apt sources are
#     never changed;
#   - `make criu RUNDIR=/dev/shm` keeps CRIU's kernel-feature cache (criu.kdat)
#     on a tmpfs, where it survives between runs (restores 2-3x faster);
#   - the binary is cached in ~/.cache/edgeshot/criu/<version>/ and copied to
#     $VENV/bin/criu, so a second run is a no-op.
# iptables is installed too: CRIU needs it to dump a network namespace.
set -euo pipefail
. "$(dirname "$0")/../lib.sh"

CRIU_VERSION="${EDGESHOT_CRIU_VERSION:-4.2.1}"
VENV="${VENV:?VENV must be the absolute path of the project venv}"
CACHE="${EDGESHOT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/edgeshot}/criu"
TARGET="$VENV/bin/criu"
say() { echo "criu: $*"; }

if ! is_root; then
  say "skipped: not root (CRIU needs root); instances will cold-start instead of restoring"
  exit 0
fi

version_ok() {  # $1: criu binary; true when >= 4.2
  local v
  v="$("$1" --version 2>/dev/null | sed -n 's/^Version: *//p')"
  [ -n "$v" ] && [ "$(printf '%s\n%s\n' 4.2 "$v" | sort -V | head -1)" = 4.2 ]
}

checks_ok() { "$1" check >/dev/null 2>&1; }

apt_install iptables

# 1. Already installed into the venv and working: nothing to do.
if [ -x "$TARGET" ] && version_ok "$TARGET" && checks_ok "$TARGET"; then
  say "ok ($("$TARGET" --version | sed -n 's/^Version: *//p') at $TARGET, criu check passed)"
  exit 0
fi

# 2. The system's CRIU, when recent enough and working.
sys_criu="$(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin command -v criu || true)"
if [ -n "$sys_criu" ] && version_ok "$sys_criu" && checks_ok "$sys_criu"; then
  ln -sf "$sys_criu" "$TARGET"
  say "ok (system CRIU $sys_criu linked to $TARGET)"
  exit 0
fi

# 3. Build from Debian's source package (cached).
built="$CACHE/$CRIU_VERSION/criu"
if [ ! -x "$built" ]; then
  apt_install ca-certificates dpkg-dev xz-utils make gcc libc6-dev \
    libprotobuf-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler python3-protobuf \
    pkg-config libnl-3-dev libnet1-dev libcap-dev libaio-dev libbsd-dev libgnutls28-dev \
    libnftables-dev uuid-dev

  # The URI of the machine's Debian archive (deb822 or one-line format).
  uri=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    uri="$(awk '/^URIs:/ {for (i = 2; i <= NF; i++) if ($i !~ /security/) {print $i; exit}}' /etc/apt/sources.list.d/debian.sources)"
  fi
  if [ -z "$uri" ]; then
    uri="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
      | awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file|ftp):/) {print $i; exit}}' | head -1)"
  fi
  [ -n "$uri" ] || { say "FAILED: no Debian archive URI found in the machine's apt sources"; exit 1; }

  aptdir="$CACHE/apt"
  mkdir -p "$aptdir/lists/partial" "$aptdir/archives/partial" "$CACHE/src"
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  printf 'Types: deb-src\nURIs: %s\nSuites: sid\nComponents: main\nSigned-By: %s\n' "$uri" "$keyring" \
    > "$aptdir/sid-src.sources"
  aptopts=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$aptdir/parts"
           -o "Dir::State::Lists=$aptdir/lists" -o "Dir::Cache::Archives=$aptdir/archives"
           -o "APT::Sandbox::User=root")
  mkdir -p "$aptdir/parts"
  cp "$aptdir/sid-src.sources" "$aptdir/parts/sid-src.sources"
  say "fetching the CRIU source package from Debian sid"
  apt-get "${aptopts[@]}" update -q >/dev/null
  pkgver="$(apt-cache "${aptopts[@]}" showsrc criu | sed -n 's/^Version: *//p' | sort -V | tail -1)"
  case "$pkgver" in
    "$CRIU_VERSION"*) ;;
    *) say "note: sid has criu $pkgver, wanted $CRIU_VERSION; building $pkgver" ;;
  esac
  # Only the upstream (orig) tarball is needed; apt checks it against the
  # signed Sources index. Some mirrors lack the .debian.tar.xz: tolerate that.
  (cd "$CACHE/src" && apt-get "${aptopts[@]}" source --download-only -q criu >/dev/null 2>&1) || true
  orig="$(ls -1 "$CACHE/src"/criu_"${pkgver%%-*}".orig.tar.* 2>/dev/null | tail -1)"
  [ -n "$orig" ] || { say "FAILED: could not download the criu $pkgver source package"; exit 1; }
  build="$CACHE/build"
  rm -rf "$build" && mkdir -p "$build"
  tar -xf "$orig" -C "$build" --strip-components=1
  say "building $(basename "$orig") (make criu RUNDIR=/dev/shm, ~20-60 s)"
  if ! make -C "$build" -j"$(nproc)" criu RUNDIR=/dev/shm >"$CACHE/build.log" 2>&1; then
    tail -30 "$CACHE/build.log"
    say "FAILED: build error, full log in $CACHE/build.log"
    exit 1
  fi
  mkdir -p "$CACHE/$CRIU_VERSION"
  # pycriu (reads/writes image files: working-set marking) comes with the sources.
  rm -rf "$CACHE/$CRIU_VERSION/pycriu"
  if [ -d "$build/lib/pycriu" ] && make -C "$build" -j"$(nproc)" lib >>"$CACHE/build.log" 2>&1; then
    cp -r "$build/lib/pycriu" "$CACHE/$CRIU_VERSION/pycriu"
  fi
  install -m 0755 "$build/criu/criu" "$built.tmp" && mv "$built.tmp" "$built"
  rm -rf "$build"
fi

install -m 0755 "$built" "$TARGET.tmp" && mv "$TARGET.tmp" "$TARGET"
if ! checks_ok "$TARGET"; then
  "$TARGET" check 2>&1 | tail -5 || true
  say "WARNING: criu check fails on this kernel; instances will cold-start here"
  exit 0
fi
say "ok ($("$TARGET" --version | sed -n 's/^Version: *//p') at $TARGET, criu check passed)"
