#!/usr/bin/env bash
# Headless Chromium for the report's browser test (tests/test_report.py): Debian's chromium
# package, installed with apt-get where it can run (as root). Elsewhere the test is skipped with
# the reason; install it yourself with 'sudo apt-get install chromium'. Idempotent.
set -euo pipefail

for binary in chromium chromium-browser google-chrome google-chrome-stable; do
  if command -v "$binary" >/dev/null; then
    exit 0
  fi
done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "setup: installing headless Chromium for the report test (apt-get install chromium)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
    >/dev/null 2>&1 || echo "setup: could not install chromium; the browser test will be skipped"
else
  echo "setup: chromium is missing; run 'sudo apt-get install chromium' (the browser test is skipped meanwhile)"
fi
