#!/usr/bin/env bash
# Every test: set up (if needed); the package and README are in step with the notebooks, which are clean;
# every notebook runs under nbdev_test, multi-process cells included; the docs site is built (scripts/docs.sh) for
# the headless-Chromium test; then pytest. LLAMA_LIT_REQUIRE_SITE=1 (set by .ci/run) makes a missing browser fatal.
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

echo "== docs site"
bash scripts/docs.sh
if ! { command -v chromium && command -v chromedriver; } >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian's chromium + chromium-driver for the browser test"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "no chromium/chromedriver: the browser test will be skipped (apt-get install chromium chromium-driver)"
  fi
fi

# torch picks its CPU kernels (and the int4 packing layout) by the CPU's vector width: run the quantization, kernel
# and GGUF tests and chapters 09-11 once more under each lower capability this CPU allows (the full run below uses
# the native one). torch.compile's own C++ is not reliable below the native width (ch 10): those tests skip there.
caps=$("$bin/python" -c 'from llama_lit.quant import cpu_capabilities; print(*cpu_capabilities()[:-1])')
for cap in $caps; do
  echo "== quantization, kernel and GGUF tests under ATEN_CPU_CAPABILITY=$cap"
  # (its own torch.compile cache: the cache does not tell capabilities apart, and a native run reusing these crashes)
  ind="${TMPDIR:-/tmp}/torchinductor_${cap}_$(id -un)"
  TORCHINDUCTOR_CACHE_DIR=$ind ATEN_CPU_CAPABILITY=$cap "$bin/python" -m pytest -q -p no:cacheprovider tests/test_quant.py tests/test_kernels.py tests/test_kquants.py tests/test_step.py tests/test_gguf.py
  for nb in 09_gguf 10_quant 11_kernels 11b_kquants 11c_step; do
    TORCHINDUCTOR_CACHE_DIR=$ind ATEN_CPU_CAPABILITY=$cap "$bin/nbdev_test" --path nbs/$nb.ipynb
  done
done

# The kernels have an AVX2 and an AVX-512 variant (chapter 11); the full run uses the CPU's own. On an AVX-512 CPU,
# run their tests once more with the AVX2 variant as the default (the tests also switch both in one process).
avx512=$("$bin/python" -c 'from llama_lit.kernels import cpu_isas; print("yes" if "avx512" in cpu_isas() else "no")')
if [ "$avx512" = yes ]; then
  echo "== kernel tests under LLAMA_LIT_KERNELS_ISA=avx2"
  LLAMA_LIT_KERNELS_ISA=avx2 "$bin/python" -m pytest -q -p no:cacheprovider tests/test_kernels.py tests/test_kquants.py tests/test_step.py tests/test_memory.py
fi

# What the AVX2 variant *executes* (the runs above only choose it): the kernel and step tests on an emulated Haswell
# (scripts/qemu_avx2.sh, QEMU user mode), where an AVX-512 instruction would stop the process (about 10 minutes).
as_avx2=no
if [ "$avx512" = yes ]; then
  if why=$(bash scripts/as_avx2.sh true 2>&1); then as_avx2=yes; else echo "no AVX2 emulation: ${why##*$'\n'}"; fi
fi
if [ "$as_avx2" = yes ]; then
  if ! command -v qemu-x86_64 >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian's qemu-user for the emulated AVX2 run"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user >/dev/null; } ||
      echo "could not install qemu-user"
  fi
  if command -v qemu-x86_64 >/dev/null; then
    echo "== kernel and step tests on an emulated AVX2-only CPU (scripts/qemu_avx2.sh)"
    bash scripts/qemu_avx2.sh
  else
    echo "no emulated AVX2 run: needs qemu-x86_64 (apt-get install qemu-user)"
  fi
fi

# The docs site once more as on a CPU with AVX2 but no AVX-512 (scripts/as_avx2.sh: /proc/cpuinfo without AVX-512,
# torch, MKL and oneDNN held at AVX2), where this CPU has AVX-512: every chapter executed that way into _site_avx2/,
# then the browser test on that site. (On an AVX2-only CPU the site above is that run already.)
if [ "$as_avx2" = yes ]; then
  echo "== docs site as on an AVX2-only CPU (scripts/as_avx2.sh)"
  LLAMA_LIT_SITE=_site_avx2 bash scripts/as_avx2.sh bash scripts/docs.sh
  LLAMA_LIT_SITE=_site_avx2 "$bin/python" -m pytest -q -p no:cacheprovider tests/test_docs_site.py
fi

echo "== pytest"
"$bin/python" -m pytest -q tests
