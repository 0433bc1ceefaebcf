#!/usr/bin/env bash
# Build the docs site into _site/ (open _site/index.html): set up (if needed), apply nbdev's cell directives
# (docs/prepare.py), then Sphinx + myst-nb execute every notebook and render it. Works offline.
# LLAMA_LIT_SITE=dir builds into that folder instead of _site/ (scripts/test.sh's AVX2 run uses _site_avx2/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
stamp=.venv/.llama_lit-docs
want=$(sha256sum docs/requirements.txt | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -r docs/requirements.txt
  echo "$want" > "$stamp"
fi
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
site=${LLAMA_LIT_SITE:-_site}
start=$(date +%s)
.venv/bin/python docs/prepare.py _docs_src
rm -rf "$site"
.venv/bin/sphinx-build -q -b html _docs_src "$site"
echo "site built in $(( $(date +%s) - start )) s: $site/index.html"
