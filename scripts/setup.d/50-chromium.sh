#!/usr/bin/env bash
# A real headless browser for the dashboards' tests (docs/architecture.md, "Tests and
# benchmarks": a real browser, Debian's chromium, for web pages): chromium and
# chromium-driver (selenium drives it; the `dev` extra installs selenium).
# Idempotent: a second run installs nothing.
set -euo pipefail
say() { echo "chromium: $*"; }
# shellcheck source=../lib.sh
source "$(cd "$(dirname "$0")/.." && pwd)/lib.sh"

want=(chromium chromium-driver fonts-dejavu-core)
if ! is_root; then
  if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    say "not root: using the installed $(chromium --version 2>/dev/null || echo chromium)"
  else
    say "skipped: not root; tests/dashboards will skip (they fail under CI=true)"
  fi
  exit 0
fi
apt_install "${want[@]}"
say "ok ($(chromium --version 2>/dev/null), chromedriver at $(command -v chromedriver))"
