#!/usr/bin/env bash
# Small machine tools the project uses everywhere: nftables (host firewall rules in
# cloud-init are syntax-checked with `nft -c`), iproute2 (slots: netns + veth), git (the
# GitOps examples run against real repositories in tests/gitops).
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
say() { echo "base: $*"; }
if ! is_root; then
  say "skipped: not root"
  exit 0
fi
apt_install nftables iproute2 procps git
say "ok"
