#!/usr/bin/env bash
# The prepared GPU run of issue 17, for the day a GPU is lent (one H100/H200, no network there): one command, under
# 8 minutes in all (each stage has its own timeout, and a deadline cuts the later ones short), log tee'd into
# $OUT/gpu_check.log when $OUT is set (the device tool's output folder).
#
#   bash scripts/gpu_wheels.sh       # HERE first: .whl/ with the wheels the GPU machine lacks (fairscale, gguf)
#   device tool run:  command "bash scripts/gpu_check.sh", carry [".whl"], timeout_s 510
#   bash scripts/gpu_check.sh --dry-run    # on any CPU machine (CI): the parts that need no GPU, in well under a minute
#
# Stages: 1 install the carried wheels into /tmp/site; 2 environment report (nvidia-smi, torch/CUDA, GPU name and
# memory); 3 the fake-CUDA tests for real on the GPU (tests/test_gpu_path.py, -x, when present); 4 one-process NCCL
# generation with the shipped model on cuda (torchrun --nproc_per_node 1 -m llama_lit generate); 5-7 bench/generate.py
# on the Llama-2-7B shape, random weights, bf16 / int8 / int4 (torch's CUDA kernels), compiled with CUDA graphs
# (mode reduce-overhead): tok/s at batch 1 and 8, memory, the fraction of the bandwidth bound (H100 3.35 TB/s,
# H200 4.8 TB/s, by the GPU's name) and gpt-fast's A100 figures beside them; 8 a summary.
# A stage that fails or times out is reported and the next one still runs; the exit status is 1 if any failed.
# --only env,bf16,int4 runs just those stages (install always runs): a shorter rerun when device time is left.
# GPU_CHECK_TOTAL_S (default 470) and GPU_CHECK_RUNS (timed runs per bench row, default 2) adjust the budget.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0; ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --only) [ $# -ge 2 ] || { echo "gpu_check.sh: --only needs a list, e.g. --only bf16,int4" >&2; exit 2; }
            ONLY=",$2,"
            for s in $(echo "$2" | tr ',' ' '); do
              case "$s" in env|tests|nccl|bf16|int8|int4) ;; *) echo "gpu_check.sh: unknown stage '$s' in --only;" \
                "stages: env tests nccl bf16 int8 int4 (install always runs)" >&2; exit 2 ;; esac
            done; shift ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (use --dry-run, --only STAGES, or --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$DRY" = 0 ] && ! command -v nvidia-smi >/dev/null 2>&1 && [ -z "${GPU_CHECK_FORCE:-}" ]; then
  echo "gpu_check.sh: no nvidia-smi here, so no NVIDIA GPU: run 'bash scripts/gpu_check.sh --dry-run' on a CPU machine" \
       "(GPU_CHECK_FORCE=1 runs the full check anyway)" >&2
  exit 2
fi

TOTAL=${GPU_CHECK_TOTAL_S:-470}          # seconds for all stages together (8 minutes = 480)
RUNS=${GPU_CHECK_RUNS:-2}                # timed runs per bench row, after one warm-up (the warm-up compiles)
#               stage          budget (s): most it may take; less when the deadline is nearer
BUDGET_install=25; BUDGET_env=20; BUDGET_tests=60; BUDGET_nccl=40; BUDGET_bf16=115; BUDGET_int8=105; BUDGET_int4=105
if [ "$DRY" = 1 ]; then TOTAL=${GPU_CHECK_TOTAL_S:-100}; BUDGET_tests=0; BUDGET_nccl=0; BUDGET_bf16=50; BUDGET_int8=15; BUDGET_int4=15; fi   # CI: ~15-25 s

if [ -n "${PYTHON:-}" ]; then PY=$PYTHON
elif [ "$DRY" = 1 ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python   # here: the project's venv
else PY=python3; fi                                                        # there: the image's python3 with torch
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor_cache}

declare -a SUMMARY=()
FAILED=0

stage() {  # stage NAME CMD...: run CMD under min(budget, time left), record ok / failed / timed out / skipped
  local name=$1; shift
  local budget_var="BUDGET_$name" left=$((TOTAL - SECONDS))
  local t=${!budget_var}; [ "$left" -lt "$t" ] && t=$left
  if [ -n "$ONLY" ] && [ "$name" != install ] && [[ "$ONLY" != *",$name,"* ]]; then
    SUMMARY+=("$name: skipped (--only)"); return 0
  fi
  echo; echo "=== stage $name (timeout ${t}s, ${SECONDS}s elapsed of ${TOTAL}s) ==="; echo "+ $*"
  if [ "$t" -lt 5 ]; then SUMMARY+=("$name: skipped (no time left)"); echo "skipped: no time left"; return 0; fi
  local start=$SECONDS rc
  timeout --kill-after=5 "$t" bash -c '"$@"' "$name" "$@"; rc=$?   # the stage's functions are exported below
  local took=$((SECONDS - start))
  if [ "$rc" = 0 ]; then SUMMARY+=("$name: ok (${took}s)")
  elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then SUMMARY+=("$name: TIMED OUT after ${t}s"); FAILED=1
  else SUMMARY+=("$name: FAILED (exit $rc, ${took}s)"); FAILED=1; fi
  return 0
}

install_wheels() {
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "no .whl/*.whl here: nothing to install (on the GPU machine fairscale and gguf are missing: run"
    echo "bash scripts/gpu_wheels.sh here and name .whl in carry)"; [ "$DRY" = 1 ] && return 0; return 1
  fi
  ls .whl
  if [ "$DRY" = 1 ]; then
    echo "dry run: would run $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl"
    return 0
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
}

env_report() {
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'); host $(uname -n), $(uname -m), kernel $(uname -r); $(nproc) CPUs"
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.max.sm,clocks.max.mem --format=csv || nvidia-smi
  else
    echo "nvidia-smi: not on this machine"
  fi
  "$PY" - <<'EOF'
import importlib, importlib.metadata, platform, sys
import torch
print(f"python {platform.python_version()} ({sys.executable}); torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}, "
      f"NCCL {torch.cuda.nccl.version() if torch.cuda.is_available() else None}")
print(f"torch.cuda.is_available(): {torch.cuda.is_available()}; device count {torch.cuda.device_count()}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    free, total = torch.cuda.mem_get_info(i)
    print(f"cuda:{i}: {p.name}, compute capability {p.major}.{p.minor}, {p.multi_processor_count} SMs, "
          f"{total / 2**30:.1f} GiB ({free / 2**30:.1f} free), bf16 {torch.cuda.is_bf16_supported()}")
for m in ("fairscale", "gguf", "sentencepiece", "tiktoken", "transformers", "triton", "pytest"):
    try: importlib.import_module(m); print(f"{m} {importlib.metadata.version(m)}")
    except Exception as e: print(f"{m}: MISSING ({type(e).__name__}: {e})")
print(f"CPU capability: {torch.backends.cpu.get_cpu_capability()}")
EOF
}

gpu_tests() {
  if [ ! -f tests/test_gpu_path.py ]; then echo "tests/test_gpu_path.py is not in this tree: nothing to run"; return 0; fi
  "$PY" -m pytest -x -q -p no:cacheprovider tests/test_gpu_path.py
  # chapter 10's CUDA int8/int4 kernels against their CPU references, on the real GPU (skipped where there is none)
  "$PY" -m pytest -q -p no:cacheprovider tests/test_quant.py -k cuda_kernels_for_real
}

nccl_generate() {
  "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m llama_lit generate --temperature 0 --max-gen-len 24 \
    "ROMEO:" "JULIET:"
}

bench() {  # bench FORMAT: the Llama-2-7B shape on cuda, compiled with CUDA graphs, llama_lit alone
  local q=()
  [ "$1" != bf16 ] && q=(--quant "$1")
  if [ "$DRY" = 1 ]; then
    "$PY" bench/generate.py --device cuda --show-config --compile --skip-transformers "${q[@]}" || return 1
    [ "$1" != bf16 ] && return 0        # one tiny CPU run of the whole bench, then the int8 path on it too
    echo "--- a tiny CPU run of bench/generate.py (the script, not a benchmark) ---"
    OMP_NUM_THREADS=1 "$PY" bench/generate.py --device cpu --tiny --runs 1 --batches 1,2 --new-tokens 4 --prompt-len 8 &&
    OMP_NUM_THREADS=1 "$PY" bench/generate.py --device cpu --tiny --runs 1 --batches 1,2 --new-tokens 4 --prompt-len 8 \
      --quant int8 --dtype bfloat16
    return
  fi
  "$PY" bench/generate.py --device cuda --config llama2-7b --dtype bfloat16 --compile --skip-transformers \
    --batches 1,8 --prompt-len 128 --new-tokens 128 --runs "$RUNS" "${q[@]}"
}

export DRY PY RUNS
export -f install_wheels env_report gpu_tests nccl_generate bench

main() {
  echo "scripts/gpu_check.sh$([ "$DRY" = 1 ] && echo ' --dry-run'): $TOTAL s for all stages; python: $PY; PYTHONPATH=$PYTHONPATH"
  echo "plan (stage: timeout s): install ${BUDGET_install}, env ${BUDGET_env}, tests ${BUDGET_tests}, nccl ${BUDGET_nccl}," \
       "bench bf16 ${BUDGET_bf16}, int8 ${BUDGET_int8}, int4 ${BUDGET_int4} (the deadline shortens the later ones)"
  stage install install_wheels
  stage env env_report
  if [ "$DRY" = 1 ]; then
    echo; echo "=== dry run: stages tests (tests/test_gpu_path.py -x) and nccl (torchrun --nproc_per_node 1 -m llama_lit" \
               "generate on cuda) need a GPU: not run ==="
    SUMMARY+=("tests: not run (dry run)" "nccl: not run (dry run)")
  else
    stage tests gpu_tests
    stage nccl nccl_generate
  fi
  stage bf16 bench bf16
  stage int8 bench int8
  stage int4 bench int4
  echo; echo "=== summary (${SECONDS}s) ==="
  printf '%s\n' "${SUMMARY[@]}"
  echo "gpt-fast's figures beside ours are from its README, measured on an A100 80GB (bf16 104.9 / int8 155.6 /" \
       "int4 196.8 tok/s, Llama-2-7B, batch 1), not on this machine."
  return $FAILED
}

if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  main 2>&1 | tee "$OUT/gpu_check.log"
  rc=${PIPESTATUS[0]}
  echo "log: $OUT/gpu_check.log"
  exit "$rc"
fi
main 2>&1
