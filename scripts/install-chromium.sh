#!/usr/bin/env bash
# Install Debian's Chromium (/usr/bin/chromium) for the real-browser end-to-end tests, which drive
# it with Playwright for Python. Playwright's own browser download (`playwright install`) is not
# used: it needs a host other than the package mirrors. Idempotent: does nothing when the browser
# is already there. About 15-60 s and 300 MB on first run. Needs Debian's package mirror and
# root (CI and the dev machines run as root); otherwise it says what to install and fails.
#
# Usage: scripts/install-chromium.sh             prints the browser's path on its last line
# Env:   SAM3_E2E_CHROMIUM   use this browser executable instead (nothing is installed)
set -euo pipefail

if [[ -n "${SAM3_E2E_CHROMIUM:-}" ]]; then
    if [[ -x "$SAM3_E2E_CHROMIUM" ]]; then
        echo "$SAM3_E2E_CHROMIUM"
        exit 0
    fi
    echo "SAM3_E2E_CHROMIUM=$SAM3_E2E_CHROMIUM is not an executable file" >&2
    exit 1
fi

BROWSER=/usr/bin/chromium
if [[ -x "$BROWSER" ]]; then
    echo "$BROWSER"
    exit 0
fi

if [[ "$(id -u)" != "0" ]]; then
    echo "Chromium is missing: install Debian's package (sudo apt-get install chromium)," >&2
    echo "or point SAM3_E2E_CHROMIUM at a Chromium/Chrome executable." >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "Chromium is missing and this is not a Debian/Ubuntu system (no apt-get):" >&2
    echo "install Chromium and point SAM3_E2E_CHROMIUM at its executable." >&2
    exit 1
fi

# Wait for another apt/dpkg (a second test run, an unattended upgrade) instead of failing.
APT=(apt-get -o DPkg::Lock::Timeout=600 -o Acquire::Retries=3 -y -q)
export DEBIAN_FRONTEND=noninteractive
echo "installing Debian's chromium (under a minute, 300 MB)" >&2
# Package lists may be missing or stale (404 on an old version): refresh once and retry.
if ! "${APT[@]}" install --no-install-recommends chromium >&2; then
    "${APT[@]}" update >&2
    "${APT[@]}" install --no-install-recommends chromium >&2
fi
if [[ ! -x "$BROWSER" ]]; then
    echo "apt-get installed chromium but $BROWSER is missing" >&2
    exit 1
fi
echo "$BROWSER"
