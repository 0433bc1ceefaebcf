#!/usr/bin/env bash
# The main job: set up (if needed), then generate text on the CPU with the small LLaMA shipped in the package
# (trained on Shakespeare by nbs/08_training.ipynb), and answer one question with the pretrained SmolLM2-135M-Instruct
# GGUF (installed by scripts/setup.sh; chapter 09). Arguments, if any, replace both and go to `llama_lit generate`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$#" -gt 0 ]; then exec .venv/bin/llama_lit generate "$@"; fi
.venv/bin/llama_lit generate "ROMEO:" "JULIET:" "KING HENRY:" --max-gen-len 60 --temperature 0.8 --top-p 0.9 --seed 1
echo "== a real pretrained LLaMA: SmolLM2-135M-Instruct (Q4_1 GGUF), chat, greedy"
echo "Why is the sky blue? Answer in two sentences." | .venv/bin/llama_lit chat --model smollm2 --temperature 0 --max-gen-len 80
