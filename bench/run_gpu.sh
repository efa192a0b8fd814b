#!/usr/bin/env bash
# SAM 3 GPU benchmark, unattended on one GPU, no network, well under 10 minutes (internal budget 500 s):
#   bash bench/run_gpu.sh --out "$OUT" --record --compile --attention sdpa,eager
# Uses the machine's python3 (override with PYTHON=...). If its transformers lacks SAM 3 or misbehaves,
# carry the project's pins as wheels in .whl/ (transformers==5.24.0 etc.): they are installed first.
cd "$(dirname "$0")/.." && { [ ! -d .whl ] || "${PYTHON:-python3}" -m pip install -q --no-index --no-deps --no-compile --target /tmp/sam3-bench-site .whl/*.whl; } && PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}$([ -d .whl ] && echo :/tmp/sam3-bench-site)" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONUNBUFFERED=1 exec "${PYTHON:-python3}" bench/gpu.py "$@"
