#!/usr/bin/env bash
# The admin page in a real browser (internal/httpd/browser_test.go): installs Debian's
# chromium when no Chromium is on PATH, then runs the browser test, which fails rather than
# skips under RELAY_BROWSER_TEST=1. Set RELAY_BROWSER_SHOTS=DIR to keep the screenshots.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="/usr/local/go/bin:$PATH"

if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null &&
  ! command -v google-chrome >/dev/null && ! command -v headless-shell >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium >/dev/null
fi

RELAY_BROWSER_TEST=1 go test -count=1 -run Browser ./internal/httpd/
