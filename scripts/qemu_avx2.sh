#!/usr/bin/env bash
# The kernel tests on an emulated x86 CPU with AVX2, FMA and F16C but no AVX-512 (QEMU's Haswell model, user mode):
# QEMU translates each instruction, and one the model lacks (an AVX-512 instruction reached from the AVX2 variant, in
# the package's kernels or in torch, MKL or oneDNN) stops the process with SIGILL. scripts/as_avx2.sh caps what the
# software *asks* the CPU; this checks what it *executes*. Slow (QEMU's TCG runs torch about 100 times slower):
#   bash scripts/qemu_avx2.sh [pytest args]   (default: tests/test_kernels.py tests/test_kquants.py tests/test_step.py)
# Needs qemu-x86_64 (Debian: apt-get install qemu-user; scripts/test.sh installs it when run as root); the library is
# compiled natively first (the compiler runs outside the emulation).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v qemu-x86_64 >/dev/null; then echo "qemu_avx2: needs qemu-x86_64 (apt-get install qemu-user)" >&2; exit 2; fi
.venv/bin/python -c 'from llama_lit.kernels import load_kernels; load_kernels()'   # compile here, natively
[ $# -gt 0 ] || set -- tests/test_kernels.py tests/test_kquants.py tests/test_step.py
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
bash scripts/as_avx2.sh qemu-x86_64 -cpu Haswell,-pcid,-x2apic,-tsc-deadline,-hle,-invpcid,-rtm .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
