#!/usr/bin/env bash
# Generation speed against transformers (bench/generate.py): set up (if needed), then run it with any arguments,
# e.g. `bash scripts/bench.sh --ablation` or `bash scripts/bench.sh --compile`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
exec .venv/bin/python bench/generate.py "$@"
