#!/usr/bin/env bash
# Create .venv/ with the backend and its dependencies (idempotent; re-runs when pyproject changes).
# torch/torchvision are pinned to a pair that carries torchvision's compiled ops (transformers'
# SAM 3 needs torchvision.ops.roi_align); on x86_64 that is a CUDA build that also runs on CPU.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"
EXTRAS="${1:-}"   # "test" to add the test dependencies
HASH="$(cat "$ROOT/pyproject.toml" "$0" | sha256sum | cut -c1-12)"
STAMP="$VENV/.installed-$HASH-${EXTRAS:-base}"

# The test install includes the base one.
if [[ -f "$STAMP" || ( -z "$EXTRAS" && -f "$VENV/.installed-$HASH-test" ) ]]; then exit 0; fi
echo "setting up $VENV (first run: a few minutes; torch is large)"
[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
case "$(uname -m)" in
    x86_64) TORCH=(torch==2.14.1 torchvision==0.29.1) ;;
    *)      TORCH=(torch==2.9.1 torchvision==0.24.1) ;;
esac
"${PIP[@]}" "${TORCH[@]}"
"${PIP[@]}" -e "$ROOT${EXTRAS:+[$EXTRAS]}"
"$VENV/bin/python" -c "import torchvision.ops, transformers, label_studio_sdk; from transformers import Sam3Model"
find "$VENV" -maxdepth 1 -name '.installed-*' ! -name ".installed-$HASH-*" -delete
touch "$STAMP"
