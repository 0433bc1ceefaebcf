#!/usr/bin/env bash
# Build the docs site into _site/ (open _site/index.html): set up (if needed), apply nbdev's cell directives
# (docs/prepare.py), then Sphinx + myst-nb execute every notebook and render it. Works offline.
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
start=$(date +%s)
.venv/bin/python docs/prepare.py _docs_src
rm -rf _site
.venv/bin/sphinx-build -q -b html _docs_src _site
echo "site built in $(( $(date +%s) - start )) s: _site/index.html"
