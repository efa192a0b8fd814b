#!/usr/bin/env bash
# Create .venv/ with the backend and its dependencies (idempotent; re-runs when pyproject.toml,
# constraints.txt or this script change). Every version comes from constraints.txt, the same
# pinned install the Docker image uses. torch/torchvision are a pair that carries torchvision's
# compiled ops (transformers' SAM 3 needs torchvision.ops.roi_align); on x86_64 that is a CUDA
# build that also runs on CPU.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"
EXTRAS="${1:-}"   # "test" to add the test dependencies
HASH="$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" "$0" | sha256sum | cut -c1-12)"
STAMP="$VENV/.installed-$HASH-${EXTRAS:-base}"

# The test install includes the base one.
if [[ -f "$STAMP" || ( -z "$EXTRAS" && -f "$VENV/.installed-$HASH-test" ) ]]; then exit 0; fi
echo "setting up $VENV (first run: a few minutes; torch is large)"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c "$ROOT/constraints.txt")
"${PIP[@]}" torch torchvision
"${PIP[@]}" -e "$ROOT${EXTRAS:+[$EXTRAS]}"
"$VENV/bin/python" -c "import torchvision.ops, transformers, label_studio_sdk, av; from transformers import Sam3Model"
find "$VENV" -maxdepth 1 -name '.installed-*' ! -name ".installed-$HASH-*" -delete
touch "$STAMP"
