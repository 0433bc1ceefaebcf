#!/usr/bin/env bash
# Run a command as it would run on an x86 CPU with AVX2 but no AVX-512, on a machine that has AVX-512:
#   bash scripts/as_avx2.sh bash scripts/docs.sh
# Everything the software asks the CPU is capped at AVX2: /proc/cpuinfo is replaced (in a private mount namespace)
# by a copy without the avx512*/amx*/avx_vnni flags (the package's kernels and bfloat16 checks read it), torch's
# vector code runs at ATEN_CPU_CAPABILITY=avx2, MKL at MKL_ENABLE_INSTRUCTIONS=AVX2 and oneDNN at
# ONEDNN_MAX_CPU_ISA=AVX2. What this cannot cap is an AVX-512 instruction that code executes on its own (CPUID says
# the CPU has it): scripts/qemu_avx2.sh runs the kernel tests on an emulated Haswell, where such an instruction faults.
# Needs root and unshare(1) (util-linux); exits 2 with the reason where the mount namespace cannot be made.
set -euo pipefail
if [ $# -eq 0 ]; then echo "usage: bash scripts/as_avx2.sh COMMAND [ARGS...]" >&2; exit 2; fi
if ! grep -qw avx2 /proc/cpuinfo; then echo "as_avx2: this CPU has no AVX2; run the command as it is" >&2; exit 2; fi
fake=$(mktemp /tmp/cpuinfo_avx2.XXXXXX)
trap 'rm -f "$fake"' EXIT
sed -E 's/ (avx512[a-z0-9_]*|amx[a-z0-9_]*|avx_vnni[a-z0-9_]*)//g' /proc/cpuinfo > "$fake"
export ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2
export AS_AVX2_CPUINFO="$fake"
# torch.compile's on-disk cache does not tell capabilities apart: kernels compiled here and reused by a native run
# corrupt its heap (seen with torch 2.13: "malloc_consolidate(): invalid chunk size"), so this run keeps its own.
export TORCHINDUCTOR_CACHE_DIR="${TMPDIR:-/tmp}/torchinductor_avx2_$(id -un)"
if ! unshare -m true 2>/dev/null; then
  echo "as_avx2: cannot make a mount namespace (needs root and unshare): /proc/cpuinfo would still list AVX-512" >&2
  exit 2
fi
unshare -m bash -c 'mount --bind "$AS_AVX2_CPUINFO" /proc/cpuinfo && exec "$@"' as_avx2 "$@"
