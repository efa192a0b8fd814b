#!/usr/bin/env bash
# Install real Label Studio 1.23.2 into its own virtualenv, .venv-ls/ (git-ignored), for the
# end-to-end tests. Idempotent: does nothing when the right version is already there.
# About 80 s and 1 GB on first run. Needs PyPI and nothing else.
#
# Usage: scripts/install-label-studio.sh [VENV_DIR]     (default: <repo>/.venv-ls)
# Env:   PYTHON (interpreter used to create the venv; default python3)
#
# Never run plain `label-studio` (it starts a server on 0.0.0.0); use `label-studio start ...`.
set -euo pipefail

LS_VERSION="1.23.2"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$REPO_ROOT/.venv-ls}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.label-studio-$LS_VERSION.ok"

if [[ -f "$STAMP" && -x "$VENV/bin/label-studio" ]]; then
    echo "label-studio $LS_VERSION already installed in $VENV"
    exit 0
fi

# Serialise concurrent installs (two test runs at once) on a lock inside the venv directory.
mkdir -p "$VENV"
exec 9>"$VENV/.install.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi
if [[ -f "$STAMP" && -x "$VENV/bin/label-studio" ]]; then
    echo "label-studio $LS_VERSION already installed in $VENV"
    exit 0
fi

echo "installing label-studio $LS_VERSION into $VENV (about 80 s, 1 GB)"
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "label-studio==$LS_VERSION"

# Check the install without starting a server (never `label-studio` bare or `--version`).
installed="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("label-studio"))')"
if [[ "$installed" != "$LS_VERSION" ]]; then
    echo "expected label-studio $LS_VERSION in $VENV, found $installed" >&2
    exit 1
fi
"$VENV/bin/python" -c 'import label_studio, label_studio_sdk.converter.brush' >/dev/null
touch "$STAMP"
echo "label-studio $LS_VERSION installed in $VENV"
