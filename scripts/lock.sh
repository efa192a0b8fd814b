#!/usr/bin/env bash
# Regenerate constraints.txt, the one pinned install used by scripts/bootstrap.sh, the tests and the
# Docker image, from the test virtualenv (.venv/, which must hold the [test] extra).
# x86_64 pins (CUDA builds of torch and their nvidia-* runtime) carry a platform marker; other
# machines get the CPU pair that scripts/bootstrap.sh installs there.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/constraints.txt"
{
    echo "# Pinned versions of every dependency (regenerate with scripts/lock.sh; do not edit by hand)."
    echo "# Used by scripts/bootstrap.sh (make serve / make test) and the Dockerfile: the image runs what the tests ran."
    "$ROOT/.venv/bin/python" -m pip freeze --exclude-editable --disable-pip-version-check 2>/dev/null \
        | grep -v -E '^(-e |sam3-backend|#)' \
        | sed -E 's/^((torch|torchvision|triton|nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+)==.*)$/\1 ; platform_machine == "x86_64"/'
    echo 'torch==2.9.1 ; platform_machine != "x86_64"'
    echo 'torchvision==0.24.1 ; platform_machine != "x86_64"'
} > "$OUT"
echo "wrote $OUT ($(grep -c '==' "$OUT") pins)"
