#!/usr/bin/env bash
# Every test: set up (if needed); the package and README are in step with the notebooks, which are clean;
# every notebook runs under nbdev_test, multi-process cells included; then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
bin=.venv/bin

if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  echo "== nbdev_export leaves llama_lit/ unchanged"
  before=$(git status --porcelain -- llama_lit nbs)
  "$bin/nbdev_export"
  "$bin/nbdev_clean"
  after=$(git status --porcelain -- llama_lit nbs)
  if [ "$before" != "$after" ]; then
    echo "nbdev_export/nbdev_clean changed files: the package is exported from the notebooks, which are committed clean:" >&2
    git status --porcelain -- llama_lit nbs >&2
    exit 1
  fi
fi
echo "== README.md matches nbs/index.ipynb"
"$bin/python" scripts/make_readme.py --check

echo "== nbdev_test (all notebooks, flags: multiproc)"
start=$(date +%s)
"$bin/nbdev_test" --flags multiproc
echo "notebooks: $(( $(date +%s) - start )) s"

echo "== pytest"
"$bin/python" -m pytest -q tests
