#!/usr/bin/env bash
# GPU check for a lent device machine (one command, under 5 minutes): CUDA dense signals vs eager, 4-bit NF4 vs
# dense, Reranker.rank timings at 20 and 50 documents, and Reranker.from_vllm where vllm imports.
# Results: $OUT/gpu_check.json and $OUT/gpu_check.log.
#
# The device machine reaches no registry and takes at most 64 MiB of carried files per call, so:
#   - Python packages it lacks (gguf, bitsandbytes) travel as wheels in .whl/ (see the device tool's README);
#   - the model travels as a local directory or GGUF file named by GPU_CHECK_MODEL (default: "default", the
#     packaged SmolLM2, whose 98 MB GGUF is over one call's limit: carry it in parts over two calls, or a
#     smaller dequantized copy). The largest packaged model (Qwen2.5-Coder-1.5B, 1.1 GB) cannot travel.
# Usage there:  bash benchmarks/gpu_check.sh      (exit 2: no CUDA; 1: a check failed; 0: all passed)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check_out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD:$PWD/integrations${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>&1
timeout 280 python3 benchmarks/gpu_check.py ${GPU_CHECK_MODEL:+--model "$GPU_CHECK_MODEL"} 2>&1 | tee "$OUT/gpu_check.log"
