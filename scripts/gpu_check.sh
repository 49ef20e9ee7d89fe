#!/usr/bin/env bash
# A short check of a VLM backbone on one CUDA device: a few training steps of the gpu preset, then
# the embedding path; prints steps/s, pins/s, peak GPU memory and MFU (pinclip/train/gpu_check.py).
#   scripts/gpu_check.sh /models/Qwen2.5-VL-3B-Instruct [--steps 10] [--batch 32] [--out gpu.json]
#   scripts/gpu_check.sh --random qwen2_5_vl             # random weights, no model folder needed
# Exits 2, saying so, on a machine without a CUDA device.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$PY" -m pinclip.train.gpu_check "$@"
