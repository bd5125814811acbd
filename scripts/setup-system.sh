#!/usr/bin/env bash
# Runs every scripts/setup.d/*.sh in order. Each one installs one machine-level
# dependency idempotently (a second run changes nothing) and, when it cannot
# (not root), says so once and exits 0 so that the pure-Python parts still work.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export VENV="${VENV:-$(cd "$here/.." && pwd)/.venv}"
shopt -s nullglob
for step in "$here"/setup.d/*.sh; do
  bash "$step"
done
