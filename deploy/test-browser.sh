#!/usr/bin/env bash
# The browser the portal's browser tests drive (tests/browser/): Debian's chromium, headless.
# Installed when /usr/bin/chromium is absent; idempotent. Playwright drives this binary
# (executable_path), so no browser is ever downloaded by Playwright itself.
set -euo pipefail

log() { printf '[test-browser] %s\n' "$*"; }
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ ! -x /usr/bin/chromium ]; then
  log "installing chromium"
  $SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
/usr/bin/chromium --version >/dev/null 2>&1 || { log "chromium does not run"; exit 1; }
# axe-core, the accessibility checker the browser tests inject from this local file (never a CDN).
AXE_VERSION=4.14.1
TOOLS="$(cd "$(dirname "$0")/.." && pwd)/var/test-tools"
if [ ! -f "$TOOLS/node_modules/axe-core/axe.min.js" ] && command -v npm >/dev/null; then
  log "installing axe-core ${AXE_VERSION} (npm)"
  npm install --prefix "$TOOLS" "axe-core@${AXE_VERSION}" --no-audit --no-fund --no-save >/dev/null
fi
