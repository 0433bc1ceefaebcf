#!/usr/bin/env bash
# Prepare .whl/: the Python packages llama_lit needs that the lent GPU machine (kind nvidia-h200, no network there)
# lacks, as wheels that travel with the working tree (`carry: [".whl"]`) and that scripts/gpu_check.sh installs into
# /tmp/site there. Run HERE, before the device call; it needs the package index (pip) and the project's .venv.
#
# What is missing there (/work/.library/device/KINDS.md, "Python packages already there", read 2026-11-17): that image
# has torch 2.11, numpy, sentencepiece, tiktoken, tokenizers, jinja2, safetensors, transformers, tqdm, pyyaml and
# pytest, but neither fairscale nor gguf. So:
#   fairscale==0.4.13  source distribution only: built here into a pure-Python wheel (`pip wheel --no-deps`, against
#                      the .venv's torch, no build isolation so pip fetches no second torch)
#   gguf==0.19.0       a pure-Python wheel from the index (its needs, numpy/pyyaml/tqdm, are there already)
# Nothing else is carried: one version of each package, or the install there stops (device README).
#
# .whl/ must never be committed: it is listed in .gitignore, and this script also adds /.whl/ to .git/info/exclude
# (the device README's step), so the device tool carries it only when the call names it in `carry`.
# Usage: bash scripts/gpu_wheels.sh        (then make the device call it prints at the end)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
mkdir -p .whl

if ! ls .whl/fairscale-0.4.13-*.whl >/dev/null 2>&1; then
  echo "building fairscale==0.4.13 into a wheel (sdist only on the index)..."
  "$PY" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w .whl fairscale==0.4.13
fi
if ! ls .whl/gguf-0.19.0-*.whl >/dev/null 2>&1; then
  echo "downloading gguf==0.19.0..."
  "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl gguf==0.19.0
fi

# One version of each package, and nothing the machine has already.
n_fs=$(ls .whl/fairscale-*.whl 2>/dev/null | wc -l); n_gg=$(ls .whl/gguf-*.whl 2>/dev/null | wc -l)
if [ "$n_fs" != 1 ] || [ "$n_gg" != 1 ]; then
  echo "error: .whl/ must hold exactly one fairscale and one gguf wheel; found: $(ls .whl)" >&2; exit 1
fi
for w in .whl/*.whl; do
  case "$(basename "$w")" in fairscale-*|gguf-*) ;; *) echo "note: $w is not one this script puts there; remove it unless a later check needs it";; esac
  echo "$(basename "$w"): $(du -k "$w" | cut -f1) KiB; needs: $(unzip -p "$w" '*/METADATA' | grep '^Requires-Dist' | grep -v extra | sed 's/Requires-Dist: //' | tr '\n' ' ')"
done
echo "total $(du -sk .whl | cut -f1) KiB (the working tree and carried paths travel within 64 MiB)"

cat <<'EOF'

Now the device call (device tool `run`, from the repository root):
  command:   bash scripts/gpu_check.sh
  carry:     [".whl"]
  timeout_s: 510
scripts/gpu_check.sh keeps its stages within 470 s (a timeout per stage, a deadline over all) and writes its log to
$OUT/gpu_check.log. With device time left afterwards, a shorter rerun: command "bash scripts/gpu_check.sh --only bf16,int4".
EOF
