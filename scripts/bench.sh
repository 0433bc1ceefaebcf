#!/usr/bin/env bash
# Generation speed. `bash scripts/bench.sh [ARGS]`: bench/generate.py (llama_lit against transformers, random weights).
# `bash scripts/bench.sh --gguf [ARGS]`: bench/gguf_cpu.py (the real SmolLM2 GGUF: llama_lit against llama.cpp and
# transformers at F32, BF16, Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_1 and Q4_0: speed, bandwidth use, memory, KL divergence to
# float32). Sets up the environment first; --gguf also builds llama-cpp-python from its source distribution the first
# time (about 10 minutes on 2 cores; never done by the tests or CI).
# `bash scripts/bench.sh --serve [ARGS]`: bench/serve.py (serving 1, 4, 8, 16 concurrent clients: llama_lit serve with
# continuous batching, llama_lit serve one request at a time, and llama-cpp-python's server, on the SmolLM2 GGUF);
# builds llama-cpp-python as --gguf does, then installs its [server] extras with pip (no rebuild; never tests or CI).
# On a GPU, bench/generate.py defaults to the Llama-2-7B shape in bfloat16 (--quant int8|int4, --compile for CUDA
# graphs); scripts/gpu_check.sh is the prepared one-command GPU run (environment, tests, NCCL, bf16/int8/int4).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
if [ "${1:-}" = "--gguf" ] || [ "${1:-}" = "--serve" ]; then
  mode=$1
  shift
  if ! .venv/bin/python -c "import sys, llama_cpp; sys.exit(llama_cpp.__version__ != '0.3.36')" 2>/dev/null; then
    echo "building llama-cpp-python==0.3.36 (llama.cpp) for the comparison: about 10 minutes on 2 cores..."
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) .venv/bin/python -m pip install -q --disable-pip-version-check llama-cpp-python==0.3.36
  fi
  if [ "$mode" = "--serve" ]; then
    # The server's own dependencies (fastapi, uvicorn, sse-starlette, starlette-context, pydantic-settings), held to
    # constraints.txt's pins where it has them; pip keeps the llama-cpp-python already built.
    if ! .venv/bin/python -c "import llama_cpp.server.app" 2>/dev/null; then
      .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt \
        "llama-cpp-python[server]==0.3.36"
    fi
    exec .venv/bin/python bench/serve.py "$@"
  fi
  exec .venv/bin/python bench/gguf_cpu.py "$@"
fi
exec .venv/bin/python bench/generate.py "$@"
