#!/usr/bin/env bash
# Installs what the browser smoke test (sfu/tests/browser_smoke.rs) needs: Debian's Chromium and
# playwright-core in ./node_modules. Idempotent: does nothing when both are present.
# Never runs `npx playwright install` (it downloads browsers, which this project cannot rely on).
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "browser setup: installing nodejs and npm"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
fi

if [ ! -x /usr/bin/chromium ]; then
  echo "browser setup: installing chromium"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium
fi

if [ ! -f node_modules/playwright-core/package.json ]; then
  echo "browser setup: npm install (playwright-core)"
  npm install --no-audit --no-fund --loglevel=error
fi

echo "browser setup: ok (chromium: $(/usr/bin/chromium --version 2>/dev/null | head -1 || echo unknown))"
