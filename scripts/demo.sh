#!/usr/bin/env bash
# The main job: set up (if needed), then generate text on the CPU with the small LLaMA shipped in the package
# (trained on Shakespeare by nbs/06_training.ipynb). Arguments, if any, replace the default ones.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$#" -eq 0 ]; then
  set -- "ROMEO:" "JULIET:" "KING HENRY:" --max-gen-len 60 --temperature 0.8 --top-p 0.9 --seed 1
fi
exec .venv/bin/llama_lit generate "$@"
