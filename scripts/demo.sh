#!/usr/bin/env bash
# The main job: set up (if needed), then run the llama_lit demo on the CPU. Extra arguments go to `llama_lit demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/llama_lit demo "$@"
