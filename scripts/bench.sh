#!/usr/bin/env bash
# Generation speed. `bash scripts/bench.sh [ARGS]`: bench/generate.py (llama_lit against transformers, random weights).
# `bash scripts/bench.sh --gguf [ARGS]`: bench/gguf_cpu.py (the real SmolLM2 GGUF: llama_lit against llama.cpp and
# transformers at F32, BF16, Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_1 and Q4_0: speed, bandwidth use, memory, KL divergence to
# float32). Sets up the environment first; --gguf also builds llama-cpp-python from its source distribution the first
# time (about 10 minutes on 2 cores; never done by the tests or CI).
# On a GPU, bench/generate.py defaults to the Llama-2-7B shape in bfloat16 (--quant int8|int4, --compile for CUDA
# graphs); scripts/gpu_check.sh is the prepared one-command GPU run (environment, tests, NCCL, bf16/int8/int4).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
if [ "${1:-}" = "--gguf" ]; then
  shift
  if ! .venv/bin/python -c "import sys, llama_cpp; sys.exit(llama_cpp.__version__ != '0.3.36')" 2>/dev/null; then
    echo "building llama-cpp-python==0.3.36 (llama.cpp) for the comparison: about 10 minutes on 2 cores..."
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) .venv/bin/python -m pip install -q --disable-pip-version-check llama-cpp-python==0.3.36
  fi
  exec .venv/bin/python bench/gguf_cpu.py "$@"
fi
exec .venv/bin/python bench/generate.py "$@"
