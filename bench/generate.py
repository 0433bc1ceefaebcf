#!/usr/bin/env python
"""Generation speed, side by side in one process on the same random weights: llama_lit (the fast path of chapter
07; with --reference also the readable path of chapters 03-05) against Hugging Face transformers' LlamaForCausalLM.generate
(its default cache and attention, and its static cache; with --compile also torch.compile on both sides).

Same prompt, greedy, the same number of new tokens; the generated tokens must agree before any speed is reported.
Each row is the median of --runs runs after one warm-up run. Prefill tok/s = batch*prompt_len / time to first token;
decode tok/s = batch*(new_tokens-1) / (time of the last token - time of the first). Peak memory: the rise of the
process's peak RSS during the run on CPU (Linux VmHWM, reset before each run), torch.cuda.max_memory_allocated on CUDA.
The last line reads `decode ratio vs transformers: R` (llama_lit fast path / transformers default, batch 1).

    python bench/generate.py                       # CPU float32, ~125M-parameter LLaMA, under a minute on 2 cores
    python bench/generate.py --config llama2-7b    # on a GPU: Llama-2-7B shape, bfloat16, plus the bandwidth bound
"""
from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llama_lit.attention import LLAMA_CONFIGS, ModelArgs, init_model_parallel  # noqa: E402
from llama_lit.fast import FastForward, weight_bytes_per_token  # noqa: E402
from llama_lit.generation import Llama  # noqa: E402
from llama_lit.model import Transformer, count_params  # noqa: E402
from llama_lit.checkpoint import convert_meta_state_dict_to_hf, params_to_hf_config  # noqa: E402

CPU_DEFAULT = dict(dim=768, n_layers=12, n_heads=12, n_kv_heads=4, vocab_size=32000, multiple_of=256)
TINY = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, multiple_of=32)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=None, help=f"a name from LLAMA_CONFIGS ({', '.join(LLAMA_CONFIGS)}); default: "
                    "llama2-7b on CUDA, a 125M-parameter GQA model on CPU")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                    help="default: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--prompt-len", type=int, default=None, help="default: 128 on CUDA, 32 on CPU")
    ap.add_argument("--new-tokens", type=int, default=None, help="default: 128 on CUDA, 16 on CPU")
    ap.add_argument("--batches", default="1,8", help="batch sizes, comma-separated")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per row (median reported), after one warm-up")
    ap.add_argument("--compile", action="store_true", help="also torch.compile: llama_lit's decode step and "
                    "transformers' forward with its static cache (slow to compile on a CPU)")
    ap.add_argument("--reference", action="store_true", help="also llama_lit's reference path (chapters 03-05)")
    ap.add_argument("--ablation", action="store_true", help="also: decode speed at batch 1 with each fast-path step added")
    ap.add_argument("--tiny", action="store_true", help="a tiny model (a smoke test of this script, not a benchmark)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        ap.error("--device cuda asked for, but torch.cuda.is_available() is False")
    if args.config is not None and args.config not in LLAMA_CONFIGS:
        ap.error(f"unknown --config {args.config!r}; choose from {', '.join(LLAMA_CONFIGS)}")
    args.dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    args.prompt_len = args.prompt_len or (128 if cuda else 32)
    args.new_tokens = args.new_tokens or (128 if cuda else 16)
    if args.new_tokens < 2: ap.error("--new-tokens must be at least 2 (decode speed needs two timed tokens)")
    if args.runs < 1: ap.error("--runs must be at least 1")
    try: args.batches = [int(b) for b in args.batches.split(",")]
    except ValueError: ap.error(f"--batches takes comma-separated integers, got {args.batches!r}")
    if 1 not in args.batches: ap.error("--batches must include 1 (the ratio on the last line is for batch 1)")
    return args


# ---- measuring ----------------------------------------------------------------------------------------------------
def sync(device):
    if device.type == "cuda": torch.cuda.synchronize(device)


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device); return torch.cuda.memory_allocated(device)
    ctypes.CDLL("libc.so.6").malloc_trim(0)                           # hand freed memory back, so a rise is real
    with open("/proc/self/clear_refs", "w") as f: f.write("5")        # Linux: peak RSS := current RSS
    return _rss("VmRSS")


def peak_since(device, base):
    if device.type == "cuda": return torch.cuda.max_memory_allocated(device) - base
    return _rss("VmHWM") - base


def _rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"): return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


class Stamps:
    "Wall-clock time at each generated token (after a device sync): stamps[0] is the time to first token."
    def __init__(self, device): self.device, self.t = device, []
    def start(self): sync(self.device); self.t0 = time.perf_counter()
    def tick(self): sync(self.device); self.t.append(time.perf_counter() - self.t0)


# ---- the contenders: each returns (generated ids (bsz, new_tokens) as a list, Stamps) -----------------------------
class NoStop:
    "A tokenizer stand-in for Llama: no EOS can stop a random model early, and pad -1 is never generated."
    eos_id, pad_id, stop_tokens = -1, -1, []


def llama_lit_runner(llm: Llama, device):
    def run(prompts, n):
        st = Stamps(device); st.start()
        r = llm._start(prompts, n, 0.0, 1.0, False)
        for _ in llm._steps(r): st.tick()
        out, _ = llm._finish(r, prompts, n, False)
        return out, st                                     # echo=False: the new tokens only
    return run


def hf_runner(hf, device, **gen_kwargs):
    from transformers import LogitsProcessor, LogitsProcessorList

    class Tick(LogitsProcessor):
        def __init__(self, st): self.st = st
        def __call__(self, input_ids, scores): self.st.tick(); return scores

    def run(prompts, n):
        ids = torch.tensor(prompts, device=device)
        st = Stamps(device); st.start()
        out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                          logits_processor=LogitsProcessorList([Tick(st)]), pad_token_id=0, eos_token_id=None, **gen_kwargs)
        return out[:, ids.shape[1]:].tolist(), st
    return run


def measure(runs_by_name: dict, prompts, n, device, runs) -> tuple[dict, dict]:
    """Warm each contender up, then `runs` rounds that run every contender once in turn (so a machine that speeds up
    or slows down affects all alike). Returns {name: tokens of its last run}, {name: median figures}.
    runs_by_name: name -> (runner, bytes it holds before a run: llama_lit's preallocated KV cache, added to its peak)."""
    for run, _ in runs_by_name.values(): run(prompts, n)
    rows = {name: [] for name in runs_by_name}
    tokens = {}
    bsz, plen = len(prompts), len(prompts[0])
    for _ in range(runs):
        for name, (run, held) in runs_by_name.items():
            base = reset_peak(device)
            tokens[name], st = run(prompts, n)
            rows[name].append(dict(ttft=st.t[0], prefill=bsz * plen / st.t[0], decode=bsz * (n - 1) / (st.t[-1] - st.t[0]),
                                   peak=peak_since(device, base) + held))
    return tokens, {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in rows.items()}


def bandwidth_bytes_per_s(device, gib=1.0):
    "Device memory bandwidth from a large copy (bytes read + written per second), median of 5."
    n = int(gib * 2**30) // 4
    a, b = torch.empty(n, device=device), torch.empty(n, device=device)
    b.copy_(a); sync(device)
    ts = []
    for _ in range(5):
        t = time.perf_counter(); b.copy_(a); sync(device); ts.append(time.perf_counter() - t)
    return 2 * n * 4 / statistics.median(ts)


# ---- main ---------------------------------------------------------------------------------------------------------
def build_models(args, device):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = dict(LLAMA_CONFIGS[args.config]) if args.config else dict(TINY if args.tiny else CPU_DEFAULT)
    max_batch = max(args.batches)
    margs = ModelArgs(**cfg, max_batch_size=max_batch, max_seq_len=args.prompt_len + args.new_tokens)
    init_model_parallel()
    torch.manual_seed(args.seed)
    with torch.device(device):
        model = Transformer(margs).to(args.dtype).eval()
    model.freqs_cis = model.freqs_cis.to(device)
    if torch.distributed.get_world_size() > 1:                          # tensor parallel: llama_lit alone
        return margs, model, None
    params = {**cfg, "context_length": margs.max_seq_len}
    hf_cfg = LlamaConfig(**params_to_hf_config(params), torch_dtype=args.dtype)
    hf_cfg.max_position_embeddings = max(hf_cfg.max_position_embeddings, margs.max_seq_len)
    with torch.device(device):
        hf = LlamaForCausalLM(hf_cfg).to(args.dtype).eval()
    missing, unexpected = hf.load_state_dict(convert_meta_state_dict_to_hf(model.state_dict(), params), strict=False)
    if unexpected or [k for k in missing if "rotary_emb" not in k]:
        raise RuntimeError(f"weights did not map onto transformers' model: missing {missing}, unexpected {unexpected}")
    return margs, model, hf


def cache_bytes(model) -> int:
    return sum(b.numel() * b.element_size() for n, b in model.named_buffers() if "cache_" in n)


def contenders_for(args, model, hf, device, tp: bool) -> dict:
    "name -> (runner, bytes it holds before a run). Each llama_lit contender gets its own Llama over the same model."
    held = cache_bytes(model)
    out = {}
    if args.reference:
        out["llama_lit reference"] = (llama_lit_runner(Llama(model, NoStop()), device), held)
    out["llama_lit fast"] = (llama_lit_runner(Llama(model, NoStop(), forward=FastForward(model)), device), held)
    if args.compile:
        out["llama_lit fast+compile"] = (llama_lit_runner(Llama(model, NoStop(), forward=FastForward(model, compile=True)), device), held)
    if tp: return out                                                   # transformers has no fairscale tensor parallelism
    out["transformers default"] = (hf_runner(hf, device), 0)
    out["transformers static"] = (hf_runner(hf, device, cache_implementation="static", disable_compile=True), 0)
    if args.compile:
        from transformers import CompileConfig
        mode = "reduce-overhead" if device.type == "cuda" else "default"
        cc = CompileConfig(mode=mode)
        cc._compile_all_devices = True                                  # transformers' switch to compile off CUDA too
        out["transformers static+compile"] = (hf_runner(hf, device, cache_implementation="static", compile_config=cc), 0)
    return out


ABLATION = [("reference path (chapters 03-05)", None),
            ("+ logits of the last position only", dict(sdpa=False, fused_norm=False, plain_linear=False)),
            ("+ F.scaled_dot_product_attention, GQA without copies", dict(fused_norm=False, plain_linear=False)),
            ("+ F.rms_norm (one call; not one kernel on CPU)", dict(plain_linear=False)),
            ("+ plain F.linear on one process = fast path", dict())]


def ablation(args, model, device, prompts, say):
    "What each step of the fast path buys: decode tok/s at batch 1, one step added per row."
    say(f"\n{'what each step buys (batch 1)':<56}{'decode tok/s':>13}{'× reference':>13}")
    runs = {name: (llama_lit_runner(Llama(model, NoStop(), forward=None if kw is None else FastForward(model, **kw)), device), 0)
            for name, kw in ABLATION}
    _, res = measure(runs, prompts, args.new_tokens, device, args.runs)
    base = res[ABLATION[0][0]]["decode"]
    for name, _ in ABLATION:
        say(f"{name:<56}{res[name]['decode']:>13.1f}{res[name]['decode'] / base:>13.2f}")


def first_difference(toks, ref):
    for i, (x, y) in enumerate(zip(toks, ref)):
        for j, (a, b) in enumerate(zip(x, y)):
            if a != b: return i, j
        if len(x) != len(y): return i, min(len(x), len(y))
    return None


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.set_grad_enabled(False)
    margs, model, hf = build_models(args, device)
    tp = torch.distributed.get_world_size() > 1
    rank0 = torch.distributed.get_rank() == 0
    say = print if rank0 else (lambda *a, **k: None)
    n_params = count_params(margs)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    say(f"device {device} ({where}), {str(args.dtype).removeprefix('torch.')}, torch {torch.__version__}, "
        f"{n_params / 1e6:.1f}M parameters (dim {margs.dim}, {margs.n_layers} layers, "
        f"{margs.n_heads}/{margs.n_kv_heads or margs.n_heads} heads, vocab {margs.vocab_size}), prompt {args.prompt_len}, "
        f"{args.new_tokens} new tokens, median of {args.runs}" + (f", {torch.distributed.get_world_size()} processes "
                                                                 "(tensor parallel)" if tp else ""))
    contenders = contenders_for(args, model, hf, device, tp)
    ref_name = "llama_lit fast" if tp else "transformers default"

    g = torch.Generator().manual_seed(args.seed + 1)
    results, prompts_1 = {}, None
    for bsz in args.batches:
        prompts = torch.randint(3, margs.vocab_size, (bsz, args.prompt_len), generator=g).tolist()
        if bsz == 1: prompts_1 = prompts
        tokens, res = measure(contenders, prompts, args.new_tokens, device, args.runs)
        results.update({(name, bsz): r for name, r in res.items()})
        for name, toks in tokens.items():
            if (d := first_difference(toks, tokens[ref_name])) is not None:
                raise SystemExit(f"batch {bsz}: {name} differs from {ref_name} at sequence {d[0]}, new token {d[1]}: "
                                 f"{toks[d[0]][:d[1] + 1]} vs {tokens[ref_name][d[0]][:d[1] + 1]} - no speed reported")
        say(f"batch {bsz}: all {len(tokens)} contenders generated the same {args.new_tokens} tokens per sequence")

    say()
    head = f"{'':<28}{'batch':>6}{'prefill tok/s':>15}{'decode tok/s':>14}{'TTFT ms':>9}{'peak MiB':>10}{'decode ×' + ('fast' if tp else 'HF'):>13}"
    say(head); say("-" * len(head))
    for bsz in args.batches:
        base = results[ref_name, bsz]["decode"]
        for name in contenders:
            r = results[name, bsz]
            say(f"{name:<28}{bsz:>6}{r['prefill']:>15.1f}{r['decode']:>14.1f}{r['ttft'] * 1e3:>9.1f}"
                f"{r['peak'] / 2**20:>10.1f}{r['decode'] / base:>13.2f}")
    if args.ablation: ablation(args, model, device, prompts_1, say)
    fast = "llama_lit fast"
    if args.compile and results["llama_lit fast+compile", 1]["decode"] > results[fast, 1]["decode"]:
        fast = "llama_lit fast+compile"
    if device.type == "cuda":
        bw = bandwidth_bytes_per_s(device)
        per_token = weight_bytes_per_token(margs, model.output.weight.element_size())
        bound = bw / per_token
        say(f"\nbandwidth {bw / 1e9:.0f} GB/s (device copy), {per_token / 1e9:.2f} GB of weights read per token: bound "
            f"{bound:.1f} tok/s at batch 1; {fast} reaches {results[fast, 1]['decode'] / bound:.0%} of it")
    if tp:
        say(f"\ndecode tok/s of {fast} at batch 1 on {torch.distributed.get_world_size()} processes: "
            f"{results[fast, 1]['decode']:.1f} (compare the same command on 1 process)")
        return
    best = max((n for n in contenders if n.startswith("transformers")), key=lambda n: results[n, 1]["decode"])
    say(f"\nbest transformers setting at batch 1: {best}; {fast} / it: "
        f"{results[fast, 1]['decode'] / results[best, 1]['decode']:.2f}")
    say(f"decode ratio vs transformers: {results[fast, 1]['decode'] / results['transformers default', 1]['decode']:.2f}")


if __name__ == "__main__":
    main()
